"""Data parallelism with ``jax.jit`` and shardings: one mesh axis over every device of every process.

The global batch is split along its leading axis over the ``"data"`` mesh axis; parameters, optimizer
state and EMA weights are replicated. Because losses are batch means, XLA's SPMD partitioner inserts the
cross-device gradient all-reduce itself, so a train step is written as if for one device. Random numbers
are drawn for the *global* batch from one key (``jax.random`` is sharding-invariant), so an example's noise
does not depend on which device it lands on, and a run on 1 or 8 devices computes the same thing.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ncsn_jax import errors

DATA_AXIS = "data"


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes) with axis ``"data"``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays held whole on every device (parameters, optimizer state, keys)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding that splits the batch axis over the mesh.

    Args:
        mesh: the data-parallel mesh.
        leading_axes: number of unsplit axes before the batch axis (1 for a ``(steps, batch, ...)`` stack).
    """
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), DATA_AXIS))


def check_batch_size(global_batch_size: int, what: str = "config.training.batch_size") -> None:
    """Raise a :class:`~ncsn_jax.errors.UserError` unless the global batch splits evenly over all devices and processes."""
    n_devices = jax.device_count()
    if global_batch_size % n_devices or global_batch_size % jax.process_count():
        raise errors.UserError(
            f"{what}={global_batch_size} is not divisible by the number of devices ({n_devices} over "
            f"{jax.process_count()} process(es)); choose a multiple of {n_devices}, e.g. "
            f"--{what}={max(n_devices, global_batch_size - global_batch_size % n_devices)}."
        )


def global_batch(local_batch: np.ndarray, mesh: Mesh, leading_axes: int = 0) -> jax.Array:
    """Assemble the global, batch-sharded array from this process's rows of it."""
    sharding = batch_sharded(mesh, leading_axes)
    return jax.make_array_from_process_local_data(sharding, local_batch)


def to_host(x: jax.Array) -> np.ndarray:
    """Gather a (possibly multi-process) global array onto this host as numpy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
