"""Per-compilation XLA options: on the CPU, convolutions run on Eigen instead of YNNPACK, and programs run once
compile without LLVM's optimisations.

jax 0.10's XLA:CPU sends convolutions and dots to YNNPACK fusions. For the convolutions of NCSN / NCSNv2 its
weight-gradient kernels are slow: 3×3, 128 channels at 32×32, batch 128, one thread: 1.85 s against 0.53 s with
Eigen's spatial convolution and 0.37 s in PyTorch (oneDNN); forward and input gradient are also 10-25% faster on
Eigen (``benchmarks/cpu_train_step.py --micro``, benchmarks/README.md). ``xla_cpu_experimental_ynn_fusion_type``
keeps YNNPACK for the dots only. The option is set per compilation (``jax.jit(..., compiler_options=...)``), so
it needs no ``XLA_FLAGS`` and leaves every other backend alone. Numbers change only by float32 rounding
(another summation order).
"""

from __future__ import annotations

from typing import Any

import jax

CPU_EIGEN_CONVOLUTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}
"""XLA debug options that leave only the dots on YNNPACK (convolutions go to Eigen)."""


def for_backend(backend: str | None = None) -> dict[str, Any] | None:
    """``compiler_options`` for ``jax.jit`` on ``backend`` (default: JAX's default backend): the CPU options
    above, ``None`` elsewhere."""
    return _on_cpu_only(CPU_EIGEN_CONVOLUTIONS, backend)


CPU_RUN_ONCE: dict[str, Any] = {"xla_backend_optimization_level": 0}
"""For a program that runs once (parameter initialisation): XLA:CPU compiles without LLVM's optimisation
passes. The digits U-Net's ``init`` compiles and runs in 2.6 s instead of 7.2 s (13 s op by op); NCSNv2 on
CIFAR-10 in 19 s (17 s op by op). Measured 2026-12-07, 2 AVX2 cores."""


def for_one_run(backend: str | None = None) -> dict[str, Any] | None:
    """``compiler_options`` for a program that runs once on ``backend``: :data:`CPU_RUN_ONCE` on the CPU,
    ``None`` elsewhere."""
    return _on_cpu_only(CPU_RUN_ONCE, backend)


def _on_cpu_only(options: dict[str, Any], backend: str | None) -> dict[str, Any] | None:
    """A copy of ``options`` when ``backend`` (default: JAX's default backend) is the CPU, else ``None``."""
    return dict(options) if (backend or jax.default_backend()) == "cpu" else None
