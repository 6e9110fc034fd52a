"""Named PRNG streams: every random number of a run derives from ``config.seed`` through one of these.

::

    root     = PRNGKey(config.seed)
    init     = fold_in(root, INIT)                              parameter initialisation
    train    = fold_in(root, TRAIN)                             train step t uses fold_in(train, t)
    snapshot = fold_in(fold_in(root, SNAPSHOT), step)           samples drawn at a training snapshot
    sample   = fold_in(fold_in(root, SAMPLE), sampling.seed)    --mode=sample (round r > 0: fold_in(sample, r))
    eval     = fold_in(fold_in(fold_in(root, EVAL), step), r)  round r of --mode=eval at checkpoint step
    held_out = fold_in(root, HELD_OUT)                          the fixed noise of the held-out loss
    metric   = fold_in(root, METRIC)                            reference draws of the toy metrics

Streams are ``fold_in`` of distinct constants, so they are independent of each other and adding a stream
changes none of the others. Training batches are drawn on the host by :mod:`ncsn_jax.datasets` from
``(config.seed, step)`` with numpy; each sampler splits its key further (:mod:`ncsn_jax.sampling`).
"""

from __future__ import annotations

import jax

INIT = 0
TRAIN = 1
SNAPSHOT = 2
SAMPLE = 3
EVAL = 4
HELD_OUT = 5
METRIC = 6
LIKELIHOOD = 7

KID_SUBSET_SEED = 0
"""numpy seed of the random subsets of feature vectors that KID compares (reference statistics and samples)."""


def _stream(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def init_key(seed: int) -> jax.Array:
    """Key of the parameter initialisation."""
    return _stream(seed, INIT)


def train_key(seed: int) -> jax.Array:
    """Key of training (kept in the train state); step ``t`` uses ``fold_in(train_key, t)``."""
    return _stream(seed, TRAIN)


def snapshot_key(seed: int, step: int) -> jax.Array:
    """Key of the samples drawn when training reaches ``step`` (``config.training.snapshot_sampling``)."""
    return jax.random.fold_in(_stream(seed, SNAPSHOT), step)


def sample_key(seed: int, sampling_seed: int, round_index: int = 0) -> jax.Array:
    """Key of ``--mode=sample``: the same ``(config.seed, config.sampling.seed)`` gives the same samples,
    another ``config.sampling.seed`` new ones from the same model. Round 0 is the first batch; with
    ``config.sampling.num_samples`` round ``r > 0`` is ``fold_in(key of round 0, r)``."""
    key = jax.random.fold_in(_stream(seed, SAMPLE), sampling_seed)
    return key if round_index == 0 else jax.random.fold_in(key, round_index)


def eval_key(seed: int, step: int, round_index: int) -> jax.Array:
    """Key of round ``round_index`` of ``--mode=eval`` at the checkpoint of ``step``: each round is a function
    of its own index, so a resumed evaluation redraws exactly the rounds it had not finished."""
    return jax.random.fold_in(jax.random.fold_in(_stream(seed, EVAL), step), round_index)


def held_out_key(seed: int) -> jax.Array:
    """Key of the fixed noise of the held-out loss (the same at every evaluation, for comparable curves)."""
    return _stream(seed, HELD_OUT)


def metric_key(seed: int) -> jax.Array:
    """Key of the reference draws of a metric (fresh true samples of the toy mixture)."""
    return _stream(seed, METRIC)


def likelihood_key(seed: int) -> jax.Array:
    """Key of the likelihood evaluation (Hutchinson projections, dequantisation)."""
    return _stream(seed, LIKELIHOOD)
