"""Sample-quality metrics on feature vectors: Fréchet distance, Inception score, kernel Inception distance.

Everything here is numpy / scipy in float64, on features computed elsewhere (the FID Inception network of
:mod:`ncsn_jax.evaluation.inception`, or any other feature extractor):

* :func:`frechet_distance` — FID (Heusel et al., 2017) between two Gaussians fitted to features::

      d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),

  computed as pytorch-fid's ``calculate_frechet_distance`` does (same square root, same fallbacks).
* :func:`inception_score` — IS (Salimans et al., 2016) from classifier logits, per split
  ``exp(E_x KL(p(y|x) ‖ p(y)))``, mean and standard deviation over the splits, as the original code.
* :func:`kernel_inception_distance` — KID (Bińkowski et al., 2018): the unbiased MMD² estimate with the cubic
  polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged over random subsets.
* :class:`FeatureStatistics` — a streaming mean / covariance accumulator (Chan et al.'s pairwise update in
  float64), so that 50,000 feature vectors never sit in memory at once, plus an optional fixed-size random
  subset of the features themselves for KID; saved to and loaded from ``.npz`` files with metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import linalg

# pytorch-fid's calculate_frechet_distance(eps=1e-6): the diagonal offset used when Σ₁Σ₂ is singular.
FRECHET_SINGULAR_OFFSET = 1e-6


def _as_matrix(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (examples, features), got shape {x.shape}.")
    return x


def frechet_distance(
    mu1: np.ndarray,
    cov1: np.ndarray,
    mu2: np.ndarray,
    cov2: np.ndarray,
    eps: float = FRECHET_SINGULAR_OFFSET,
) -> float:
    """Fréchet distance ``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})`` between N(μ₁, Σ₁) and N(μ₂, Σ₂).

    Follows pytorch-fid's ``calculate_frechet_distance`` (Dougal Sutherland's stable version) step for step:
    ``scipy.linalg.sqrtm(Σ₁ Σ₂)``; if that square root is not finite (a singular product), ``eps·I`` is added
    to both covariances and the root taken again; a complex root whose diagonal has imaginary parts within
    1e-3 of zero keeps its real part, larger imaginary parts are an error. All arithmetic in float64.

    Raises:
        ValueError: shapes disagree, or the square root has a large imaginary component.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu1.shape != mu2.shape or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"Fréchet distance needs means of shape (d,) and covariances (d, d) for one d; got means "
            f"{mu1.shape}, {mu2.shape} and covariances {cov1.shape}, {cov2.shape}."
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                "The matrix square root of Σ₁Σ₂ has a large imaginary component "
                f"(max |imag| = {np.max(np.abs(covmean.imag)):.3g}); the covariances are not valid "
                "(symmetric positive semi-definite) estimates."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception score: mean and standard deviation over ``splits`` of ``exp(E_x KL(p(y|x) ‖ p(y)))``.

    As the original code (Salimans et al., 2016, ``inception_score.py``): ``p(y|x) = softmax(logits)``; the
    examples are cut into ``splits`` consecutive parts of ``N // splits`` (the last ones one larger when
    ``splits`` does not divide N, at the same boundaries ``i·N // splits``); in each part
    ``p(y)`` is the mean of ``p(y|x)`` and the score is ``exp(mean_x Σ_y p(y|x) (log p(y|x) − log p(y)))``.
    The logarithms come from a log-softmax, so confident logits do not produce ``0·log 0`` NaNs.

    For the FID Inception network pass its logits without the fc bias, as the original code (which multiplies
    ``pool_3`` by the softmax weights only) and torch-fidelity do.

    Returns:
        ``(mean, std)`` of the per-split scores (``np.std``, population standard deviation).
    """
    logits = _as_matrix(logits, "logits")
    n = logits.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"inception_score needs 1 <= splits <= number of examples, got {splits} and {n}.")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        part_p, part_log_p = p[rows], log_p[rows]
        log_marginal = np.log(part_p.mean(axis=0, keepdims=True))
        kl = np.sum(part_p * (part_log_p - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (xᵀy / d + 1)³`` between the rows of ``x`` (n, d) and ``y`` (m, d)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equal-size samples with :func:`polynomial_kernel` (Bińkowski et al.'s estimator).

    ``MMD² = Σ_{i≠j} k(xᵢ,xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ) / m²``
    (their ``mmd_est='unbiased'``: U-statistics within each sample, the full mean across the two).
    """
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Kernel Inception distance: mean and standard deviation of :func:`mmd2_unbiased` over random subsets.

    As Bińkowski et al.'s ``polynomial_mmd_averages`` (and torch-fidelity's KID, whose defaults these are):
    each of ``num_subsets`` rounds draws ``subset_size`` rows of ``feats1`` and, independently, of ``feats2``,
    each without replacement, and computes the unbiased MMD² of the pair. ``subset_size`` is clipped to the
    smaller sample. Float64 throughout.

    Args:
        feats1, feats2: ``(n1, d)`` and ``(n2, d)`` features (n1, n2 >= 2).
        num_subsets: number of subset pairs.
        subset_size: rows per subset (at most ``min(n1, n2)``).
        seed: seed or ``np.random.Generator`` for the subsets.

    Returns:
        ``(mean, std)`` over the subsets (``np.std``).
    """
    feats1, feats2 = _as_matrix(feats1, "feats1"), _as_matrix(feats2, "feats2")
    if feats1.shape[1] != feats2.shape[1]:
        raise ValueError(f"KID needs features of one dimension, got {feats1.shape[1]} and {feats2.shape[1]}.")
    size = min(subset_size, feats1.shape[0], feats2.shape[0])
    if size < 2 or num_subsets < 1:
        raise ValueError(
            f"KID needs subsets of at least 2 examples and num_subsets >= 1; got {feats1.shape[0]} and "
            f"{feats2.shape[0]} examples, subset_size={subset_size}, num_subsets={num_subsets}."
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        x = feats1[rng.choice(feats1.shape[0], size, replace=False)]
        y = feats2[rng.choice(feats2.shape[0], size, replace=False)]
        mmds[i] = mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())


class FeatureStatistics:
    """Running mean and covariance of feature vectors fed in batches, and an optional random subset of them.

    ``update(batch)`` merges a batch's count ``n_b``, mean ``μ_b`` and centred scatter
    ``M_b = Σ (x − μ_b)(x − μ_b)ᵀ`` into the totals with Chan et al.'s pairwise formulas (float64)::

        n = n_a + n_b,   δ = μ_b − μ_a,   μ = μ_a + δ n_b / n,   M = M_a + M_b + δδᵀ n_a n_b / n,

    which stays accurate when the mean is large compared with the spread (no ``Σxxᵀ − nμμᵀ`` cancellation).
    ``covariance = M / (n − 1)``, the unbiased estimate ``np.cov(features, rowvar=False)`` gives.

    With ``keep > 0`` it also keeps a uniform random subset of ``keep`` feature vectors for KID (reservoir
    sampling, algorithm R, from ``seed``): the first ``keep`` vectors, then vector ``t`` (0-based) replaces
    slot ``j ~ U{0..t}`` when ``j < keep``. The subset depends on the order of the vectors and the seed, not
    on how they were cut into batches. The state (random generator included) is saved by :meth:`save`, so an
    accumulation can be continued after :meth:`load`.
    """

    FORMAT = "ncsn_jax.FeatureStatistics/1"

    def __init__(self, dim: int, keep: int = 0, seed: int = 0, metadata: Mapping[str, Any] | None = None):
        if dim < 1 or keep < 0:
            raise ValueError(f"FeatureStatistics needs dim >= 1 and keep >= 0, got dim={dim}, keep={keep}.")
        self.dim = int(dim)
        self.keep = int(keep)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.count = 0
        self._mean = np.zeros(dim, np.float64)
        self._scatter = np.zeros((dim, dim), np.float64)
        self._kept = np.zeros((self.keep, dim), np.float32)
        self._rng = np.random.default_rng(seed)

    def update(self, batch: np.ndarray) -> None:
        """Adds the rows of ``batch`` (``(n, dim)``, any float dtype; accumulated in float64)."""
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"Expected a batch of shape (n, {self.dim}), got {batch.shape}.")
        n_b = batch.shape[0]
        if n_b == 0:
            return
        self._keep_rows(batch)
        x = batch.astype(np.float64)
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._scatter += scatter_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def _keep_rows(self, batch: np.ndarray) -> None:
        if self.keep == 0:
            return
        positions = self.count + np.arange(batch.shape[0])
        fill = positions < self.keep
        self._kept[positions[fill]] = batch[fill]
        later = positions[~fill]
        if later.size:
            # One int64 draw per vector: the stream does not depend on the batch boundaries.
            slots = np.array([self._rng.integers(0, t + 1) for t in later], np.int64)
            for row, slot in zip(batch[~fill][slots < self.keep], slots[slots < self.keep]):
                self._kept[slot] = row

    @property
    def mean(self) -> np.ndarray:
        """``(dim,)`` float64 mean of the features seen."""
        self._check_count(1)
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """``(dim, dim)`` float64 unbiased covariance ``M / (n − 1)`` (``np.cov(..., rowvar=False)``)."""
        self._check_count(2)
        cov = self._scatter / (self.count - 1)
        return (cov + cov.T) / 2.0  # exactly symmetric

    @property
    def kept(self) -> np.ndarray:
        """The random subset of at most ``keep`` feature vectors (float32), for KID."""
        return self._kept[: min(self.count, self.keep)].copy()

    def _check_count(self, needed: int) -> None:
        if self.count < needed:
            raise ValueError(f"FeatureStatistics has seen {self.count} feature vectors; need {needed}.")

    def save(self, path: str) -> None:
        """Writes the whole state as an ``.npz`` file (atomically: a temporary file, then a rename)."""
        header = {
            "format": self.FORMAT,
            "dim": self.dim,
            "keep": self.keep,
            "count": self.count,
            "metadata": self.metadata,
            "rng_state": self._rng.bit_generator.state,
        }
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        with open(tmp, "wb") as f:
            np.savez(
                f,
                header=np.asarray(json.dumps(header)),
                mean=self._mean,
                scatter=self._scatter,
                kept=self._kept[: min(self.count, self.keep)],
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> FeatureStatistics:
        """Reads a file written by :meth:`save`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a saved :class:`FeatureStatistics`.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Feature statistics file {path} does not exist.")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {name: data[name] for name in ("mean", "scatter", "kept")}
        except (KeyError, ValueError, OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a feature statistics file ({type(e).__name__}: {e}).") from None
        if header.get("format") != cls.FORMAT:
            raise ValueError(f"{path} is not a feature statistics file (format {header.get('format')!r}).")
        stats = cls(header["dim"], header["keep"], metadata=header["metadata"])
        d = stats.dim
        kept_rows = min(header["count"], header["keep"])
        shapes = tuple(arrays[name].shape for name in ("mean", "scatter", "kept"))
        if shapes != ((d,), (d, d), (kept_rows, d)):
            raise ValueError(f"{path}: array shapes do not match its header (dim {d}); the file is damaged.")
        stats.count = int(header["count"])
        stats._mean = arrays["mean"].astype(np.float64)
        stats._scatter = arrays["scatter"].astype(np.float64)
        stats._kept[:kept_rows] = arrays["kept"]
        stats._rng.bit_generator.state = header["rng_state"]
        return stats
