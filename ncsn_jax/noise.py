"""Noise schedules and NCSNv2's data-driven techniques for choosing them.

NCSNv2 (Song & Ermon, 2020, "Improved Techniques for Training Score-Based Generative Models") replaces
hand tuning of the noise levels and of the Langevin step size by simple computations on the data:

* Technique 1 (§3.1), :func:`max_pairwise_distance`: ``σ₁ ≈ max_{i,j} ‖x⁽ⁱ⁾ − x⁽ʲ⁾‖₂``.
* Technique 2 (§3.2), :func:`num_scales_for_overlap`: a geometric sequence with ratio ``γ = σᵢ₋₁/σᵢ``
  such that ``Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) ≈ 0.5`` (:func:`overlap`).
* Technique 4 (§4), :func:`langevin_step_lr`: the step size ``ε`` that brings the variance ratio of
  Langevin dynamics on Gaussian data (:func:`step_lr_criterion`) closest to one.

Everything here runs once, before training or sampling, in NumPy/SciPy float64; results are plain
Python numbers or NumPy arrays.

Step-size conventions. This project's Langevin update is ``x ← x + (α/2)s + √α z`` with
``αᵢ = step_lr·σᵢ²/σ_L²`` (NCSN's Algorithm 1). NCSNv2's paper and the reference PyTorch code write
``x ← x + α s + √(2α) z``, so the same chain has a reference ``step_lr`` half of ours.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import optimize, special

# Φ(3) − Φ(−3): the overlap of Technique 2 as γ → 1⁺; no target at or above it can be reached.
_MAX_OVERLAP = float(special.ndtr(3.0) - special.ndtr(-3.0))


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int) -> np.ndarray:
    """Descending geometric noise levels ``σᵢ = σ_max·(σ_min/σ_max)^{(i−1)/(L−1)}``, ``i = 1..L``.

    Computed as ``exp(linspace(log σ_max, log σ_min, L))`` in float64 (the reference code's expression),
    with the end points set to ``sigma_max`` and ``sigma_min`` exactly, then cast to float32.

    Args:
      sigma_max: largest level ``σ₁``.
      sigma_min: smallest level ``σ_L`` (``0 < σ_min ≤ σ_max``).
      num_scales: ``L ≥ 1``; ``L = 1`` requires ``sigma_max == sigma_min`` (single-scale DSM).

    Returns:
      ``(L,)`` float32 NumPy array (wrap it in ``jnp.asarray`` for device use).
    """
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if num_scales < 1 or (num_scales == 1 and sigma_max != sigma_min):
        raise ValueError(f"num_scales must be >= 2 (or 1 with sigma_max == sigma_min), got {num_scales}")
    sigmas = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas.astype(np.float32)


def config_sigmas(config) -> np.ndarray:
    """The noise table of a config: :func:`geometric_sigmas` of ``config.model.{sigma_max, sigma_min,
    num_scales}`` (float32, descending), whose ``"auto"`` fields must be resolved.

    The one function that builds a config's table, also reached as :func:`ncsn_jax.config_lib.sigmas`: the
    train step, the samplers, NCSN's level lookup (:mod:`ncsn_jax.models.ncsn`) and the check of a converted
    checkpoint's ``sigmas`` buffer all use it. It lives here, below :mod:`ncsn_jax.models`, so that the
    models need not import :mod:`ncsn_jax.config_lib` (which imports them to check a config's names).

    Raises:
      ValueError: ``sigma_max`` or ``num_scales`` is still ``"auto"`` (resolve it first with
        :func:`ncsn_jax.config_lib.resolve_auto_fields`).
    """
    model = config.model
    for name in ("sigma_max", "num_scales"):
        if isinstance(model[name], str):  # config_lib.validate admits no string but "auto"
            raise ValueError(
                f"config.model.{name} is {model[name]!r}: resolve 'auto' fields first "
                "(config_lib.resolve_auto_fields)."
            )
    return geometric_sigmas(float(model.sigma_max), float(model.sigma_min), int(model.num_scales))


def max_pairwise_distance(x, *, max_points: int = 2048, seed: int = 0, chunk_size: int = 256) -> float:
    """Technique 1 of NCSNv2 (§3.1): ``σ₁ ≈ max_{i≠j} ‖x⁽ⁱ⁾ − x⁽ʲ⁾‖₂`` over the training data.

    For more than ``max_points`` examples the maximum is taken over a uniform subsample without
    replacement, ``np.random.default_rng(seed).choice(N, max_points, replace=False)``, which gives a lower
    bound of the full-data maximum. Distances are computed in float64, ``chunk_size`` rows at a time
    (``‖a‖² + ‖b‖² − 2aᵀb`` against all kept points, memory ``O(chunk_size · max_points)``), and the winning
    pair's distance is recomputed directly as ``‖a − b‖₂``.

    Args:
      x: ``(N, *dims)`` data in the units the model sees (e.g. images in [0, 1]); any array-like.
      max_points: largest number of points compared pairwise.
      seed: seed of the subsample; the same seed selects the same points.
      chunk_size: rows per block of the distance computation.

    Returns:
      The largest pairwise Euclidean distance, a Python float.
    """
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 points, got {n}")
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        x = np.asarray(x)[keep]  # subsample before any copy or cast of the full data
    points = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    squared_norms = np.sum(points**2, axis=1)

    best_squared, best_pair = -1.0, (0, 1)
    for start in range(0, len(points), chunk_size):
        block = points[start : start + chunk_size]
        squared = (
            squared_norms[start : start + chunk_size, None] + squared_norms[None, :] - 2.0 * block @ points.T
        )
        row, col = np.unravel_index(np.argmax(squared), squared.shape)
        if squared[row, col] > best_squared:
            best_squared, best_pair = float(squared[row, col]), (start + int(row), int(col))
    first, second = best_pair
    return float(np.linalg.norm(points[first] - points[second]))


def overlap(gamma, dim: int):
    """Technique 2's overlap ``Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ)`` (NCSNv2 §3.2).

    For ``x ~ N(0, σᵢ² I)`` in ``D`` dimensions, ``‖x‖ ≈ N(√D σᵢ, σᵢ²/2)``; the overlap is
    ``P(‖x‖ ∈ √D σᵢ₋₁ ± 3σᵢ₋₁/√2)`` with ``σᵢ₋₁ = γσᵢ``: the chance that a sample at level ``σᵢ`` has a norm
    typical of level ``σᵢ₋₁`` (within three of its standard deviations). ``Φ`` is the standard normal CDF.

    Args:
      gamma: ratio ``γ = σᵢ₋₁/σᵢ ≥ 1``; scalar or array.
      dim: data dimension ``D``.

    Returns:
      The overlap, float64 (same shape as ``gamma``).
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    shift = np.sqrt(2.0 * dim) * (gamma - 1.0)
    return special.ndtr(shift + 3.0 * gamma) - special.ndtr(shift - 3.0 * gamma)


def num_scales_for_overlap(
    sigma_max: float,
    sigma_min: float,
    dim: int,
    *,
    target: float = 0.5,
    criterion: Literal["nearest", "at_least"] = "nearest",
) -> int:
    """Technique 2 of NCSNv2 (§3.2): the number of geometric levels ``L`` whose overlap is ≈ ``target``.

    With ``L`` levels from ``sigma_max`` to ``sigma_min`` the ratio is ``γ_L = (σ_max/σ_min)^{1/(L−1)}``,
    and ``overlap(γ_L, D)`` grows with ``L``. Let ``L⁺`` be the smallest ``L`` with overlap ``≥ target``.

    * ``criterion="nearest"`` (default; the paper's "≈ 0.5") returns whichever of ``L⁺ − 1`` and ``L⁺`` has
      its overlap closer to ``target``. CIFAR-10 (D = 3072, σ 50 → 0.01) gives 219, CelebA 64×64
      (D = 12288, σ 90 → 0.01) gives 472 (the published configs round up to 232 and 500).
    * ``criterion="at_least"`` returns ``L⁺`` (220 and 473 for the same two data sets).

    Args:
      sigma_max: ``σ₁``, e.g. from :func:`max_pairwise_distance`.
      sigma_min: ``σ_L``.
      dim: data dimension ``D``.
      target: overlap to reach, in ``(0, Φ(3) − Φ(−3))``.
      criterion: ``"nearest"`` or ``"at_least"``.

    Returns:
      ``L``, a Python int ≥ 2.
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if not 0 < target < _MAX_OVERLAP:
        raise ValueError(f"target must lie in (0, {_MAX_OVERLAP:.5f}), got {target}")
    if criterion not in ("nearest", "at_least"):
        raise ValueError(f"criterion must be 'nearest' or 'at_least', got {criterion!r}")

    log_ratio = np.log(sigma_max / sigma_min)

    def overlap_with(num_scales: np.ndarray) -> np.ndarray:
        return overlap(np.exp(log_ratio / (num_scales - 1.0)), dim)

    limit = 1024
    while overlap_with(np.array(limit)) < target:
        limit *= 2
        if limit > 2**31:
            raise ValueError("no number of scales reaches the target overlap")
    candidates = np.arange(2, limit + 1)
    at_least = int(candidates[np.argmax(overlap_with(candidates) >= target)])
    if criterion == "at_least" or at_least == 2:
        return at_least
    below, above = overlap_with(np.array([at_least - 1, at_least]))
    return at_least - 1 if target - below < above - target else at_least


def step_lr_criterion(step_lr, gamma: float, sigma_min: float, n_steps_each: int):
    """Technique 4's variance ratio (NCSNv2 §4), with ``ε`` in the NCSNv2/reference convention.

    For Gaussian data, after ``T`` steps of ``x ← x + α s + √(2α) z`` at level ``σᵢ`` started from level
    ``σᵢ₋₁ = γσᵢ``, the variance ratio ``s_T²/σᵢ²`` is::

        f(ε) = (1 − ε/σ_L²)^{2T} (γ² − 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²)) + 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²)

    evaluated here in the algebraically equal, cancellation-free form
    ``f = (1 − u)^{2T} (γ² − c) + c`` with ``u = ε/σ_L²`` and ``c = 1/(1 − u/2)``.

    Args:
      step_lr: ``ε`` in the reference convention (half of ours), ``0 < ε < σ_L²``; scalar or array.
      gamma: ratio ``σᵢ₋₁/σᵢ`` of the geometric schedule.
      sigma_min: ``σ_L``.
      n_steps_each: ``T``, Langevin steps per level.

    Returns:
      ``f(ε)`` in float64.
    """
    u = np.asarray(step_lr, dtype=np.float64) / float(sigma_min) ** 2
    c = 1.0 / (1.0 - 0.5 * u)
    return (1.0 - u) ** (2 * n_steps_each) * (gamma**2 - c) + c


def langevin_step_lr(
    sigmas,
    dim: int,
    n_steps_each: int,
    *,
    convention: Literal["ours", "reference"] = "ours",
) -> float:
    """Technique 4 of NCSNv2 (§4): the ``step_lr`` that makes :func:`step_lr_criterion` closest to one.

    Finds ``ε* = argmin_ε |f(ε) − 1|`` over ``0 < ε < σ_L²`` (``f`` is :func:`step_lr_criterion`; its
    minimum lies above 1, so ``ε*`` is its minimiser) by a log-spaced grid refined with bounded Brent
    search, in float64. CIFAR-10 (σ 50 → 0.01, L = 232, T = 5) gives ε* = 6.18e-6 in the reference
    convention (published 6.2e-6); CelebA 64×64 (σ 90 → 0.01, L = 500, T = 5) gives 3.34e-6 (published
    3.3e-6; the overlap criterion's L = 472 would give 3.52e-6).

    Args:
      sigmas: descending geometric noise levels (e.g. :func:`geometric_sigmas`), ``L ≥ 2``.
      dim: data dimension ``D``. The criterion does not depend on it (it is derived per coordinate); it is
        part of the signature for symmetry with the other techniques and is only validated.
      n_steps_each: ``T``, Langevin steps per level.
      convention: ``"ours"`` (default) returns ``step_lr`` for ``x ← x + (α/2)s + √α z`` as used by
        :mod:`ncsn_jax.sampling`, i.e. twice the reference value; ``"reference"`` returns the value for
        ``x ← x + α s + √(2α) z`` (NCSNv2 paper and PyTorch code).

    Returns:
      ``step_lr`` as a Python float.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"need a 1-D array of at least 2 noise levels, got shape {sigmas.shape}")
    ratios = sigmas[:-1] / sigmas[1:]
    if not np.allclose(ratios, ratios[0], rtol=1e-4):
        raise ValueError("technique 4 assumes a geometric schedule; the ratios sigma[i-1]/sigma[i] differ")
    if int(dim) < 1 or int(n_steps_each) < 1:
        raise ValueError(f"dim and n_steps_each must be positive, got {dim} and {n_steps_each}")
    if convention not in ("ours", "reference"):
        raise ValueError(f"convention must be 'ours' or 'reference', got {convention!r}")

    gamma, sigma_min = float(ratios[0]), float(sigmas[-1])

    def distance_from_one(log_u: float) -> float:
        return float(
            np.abs(step_lr_criterion(np.exp(log_u) * sigma_min**2, gamma, sigma_min, n_steps_each) - 1.0)
        )

    log_u = np.linspace(np.log(1e-12), np.log1p(-1e-12), 4001)
    values = np.abs(step_lr_criterion(np.exp(log_u) * sigma_min**2, gamma, sigma_min, n_steps_each) - 1.0)
    best = int(np.argmin(values))
    lower, upper = log_u[max(best - 1, 0)], log_u[min(best + 1, len(log_u) - 1)]
    refined = optimize.minimize_scalar(
        distance_from_one, bounds=(lower, upper), method="bounded", options={"xatol": 1e-12}
    )
    reference_step_lr = float(np.exp(refined.x)) * sigma_min**2
    return reference_step_lr if convention == "reference" else 2.0 * reference_step_lr
