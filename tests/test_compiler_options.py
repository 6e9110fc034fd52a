"""``compiler_options.for_backend``: on the CPU, convolutions leave YNNPACK (Eigen runs them), dots stay, and the
loss and gradients agree with the default compilation to float32 rounding."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import toy
from ncsn_jax import compiler_options, parallel, train, train_state


def conv_and_dot(x, w, m):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.tanh(y.reshape(-1, y.shape[-1]) @ m)


def test_backend_selection():
    assert compiler_options.for_backend("gpu") is None
    assert compiler_options.for_backend("tpu") is None
    assert compiler_options.for_backend("cpu") == compiler_options.CPU_EIGEN_CONVOLUTIONS


def test_cpu_options_move_convolutions_off_ynnpack_with_the_same_values():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    # Large enough for XLA to hand the convolutions to YNNPACK by default (it keeps tiny ones, e.g. 8x8x16).
    x = jax.random.normal(keys[0], (2, 16, 16, 64))
    w = jax.random.normal(keys[1], (3, 3, 64, 64)) / 24.0
    m = jax.random.normal(keys[2], (64, 64)) / 8.0
    loss = lambda x, w, m: jnp.sum(conv_and_dot(x, w, m) ** 2)
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    default = grad.lower(x, w, m).compile()
    eigen = grad.lower(x, w, m).compile(compiler_options=compiler_options.for_backend("cpu"))

    def ynn_convolutions(compiled):
        return [
            line
            for line in compiled.as_text().splitlines()
            if "__ynn_fusion" in line and "conv_general_dilated" in line
        ]

    assert ynn_convolutions(default)  # jax 0.10's default: convolutions are YNNPACK fusions
    assert not ynn_convolutions(eigen)
    assert "__ynn_fusion" in eigen.as_text()  # the dot still is
    # Another summation order only: every output and gradient agrees to float32 rounding of its largest entry
    # (measured against float64: both within 8e-7 of the largest entry).
    for a, b in zip(jax.tree.leaves(default(x, w, m)), jax.tree.leaves(eigen(x, w, m)), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * float(jnp.max(jnp.abs(a))))


class _ConvScore(nn.Module):
    """One 3×3 convolution at 16×16×64, large enough that XLA:CPU's defaults make it (forward, input and weight
    gradient) YNNPACK fusions."""

    @nn.compact
    def __call__(self, x, sigma):
        return nn.Conv(x.shape[-1], (3, 3))(x) / sigma[:, None, None, None]


def _compiled_train_step(**kwargs):
    config = toy.get_config()
    model, optimizer, sigmas = _ConvScore(), train_state.create_optimizer(config.optim), jnp.array([1.0, 0.5])
    shape = (16, 16, 64)
    state = train_state.init_train_state(model, config, shape, optimizer)
    mesh = parallel.create_mesh()
    batch = parallel.global_batch(np.zeros((1, 4, *shape), np.float32), mesh, leading_axes=1)
    step = train.compile_train_step(model, config, sigmas, optimizer, mesh, **kwargs)
    return step.lower(state, batch).compile()


def test_train_step_compiles_with_the_cpu_options_and_xla_defaults_on_request():
    """The project's train step (what Trainer.create jits) takes ``for_backend()``: on the CPU its convolutions,
    forward and both gradients, are off YNNPACK; ``xla_options={}`` gives XLA's own compilation back (the
    baseline of benchmarks/cpu_train_step.py), with the convolutions on YNNPACK."""

    def ynn_convolutions(compiled):
        return sum(
            "__ynn_fusion" in line and "conv_general_dilated" in line
            for line in compiled.as_text().splitlines()
        )

    assert ynn_convolutions(_compiled_train_step(xla_options={})) >= 2
    assert ynn_convolutions(_compiled_train_step()) == 0
