"""ncsn-jax: NCSN / NCSNv2 score-based generative models in JAX and Flax.

Modules, one idea each:

* :mod:`ncsn_jax.losses`    — exact, sliced and denoising score matching objectives.
* :mod:`ncsn_jax.sampling`  — (annealed) Langevin dynamics, inpainting, interpolation.
* :mod:`ncsn_jax.noise`     — noise schedules and NCSNv2's data-driven techniques.
* :mod:`ncsn_jax.sde`       — the VE SDE behind the schedule (continuous time, the model's own σ table).
* :mod:`ncsn_jax.sde_sampling` — predictor–corrector and probability-flow ODE samplers.
* :mod:`ncsn_jax.likelihood` — log-likelihoods through the probability-flow ODE, bits/dim.
* :mod:`ncsn_jax.models`    — score networks (NCSN, NCSNv2 family, toy MLP) and checkpoint conversion.
* :mod:`ncsn_jax.datasets`  — deterministic input pipelines (TFDS, digits, 2-D toy mixture).
* :mod:`ncsn_jax.train`     — train state, data-parallel train step, the training loop.
"""

__version__ = "0.1.0"
