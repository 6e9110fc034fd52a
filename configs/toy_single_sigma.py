"""The sliced score matching paper's setting on NCSN's 2-D toy mixture: one noise level, an unconditional score.

An unconditional MLP ``s(x) = f(x / data_std) / data_std`` trained at the single level σ = 0.5 (``num_scales =
1``) with any objective (``training.loss``: dsm, ssm, ssm_vr, exact) learns ∇ log p_σ of the smoothed mixture;
sampling is then plain Langevin dynamics at that σ (annealed Langevin with one level).
"""

from configs import toy


def get_config():
    config = toy.get_config()
    config.model.sigma_conditioning = "none"
    config.model.num_scales = 1
    config.model.sigma_max = 0.5
    config.model.sigma_min = 0.5
    config.training.loss = "ssm_vr"
    config.training.batch_size = 256
    config.optim.lr = 1e-3
    return config
