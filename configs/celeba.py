"""NCSNv2 on CelebA 64x64 (Song & Ermon 2020, ``ncsnv2/configs/celeba.yml``).

sigma 90 -> 0.01 over 500 geometric levels, Adam 1e-4, EMA 0.999, batch 128, 210k iterations,
5 Langevin steps per level with the reference step 3.3e-6 (6.6e-6 in our convention), final denoising.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "celeba"
    config.data.image_size = 64
    config.data.num_channels = 3
    config.data.random_flip = True

    config.model.name = "ncsnv2"
    config.model.ngf = 128
    config.model.sigma_max = 90.0
    config.model.sigma_min = 0.01
    config.model.num_scales = 500
    config.model.ema_rate = 0.999

    config.training.n_iters = 210_001
    config.training.batch_size = 128
    config.training.snapshot_freq = 5000

    config.optim.lr = 1e-4

    config.sampling.n_steps_each = 5
    config.sampling.step_lr = 2 * 3.3e-6
    config.sampling.denoise = True
    config.sampling.batch_size = 64
    return config
