"""NCSNv2 on CIFAR-10 (Song & Ermon 2020, ``ncsnv2/configs/cifar10.yml``).

sigma 50 -> 0.01 over 232 geometric levels, Adam 1e-4, EMA 0.999, batch 128, 300k iterations,
5 Langevin steps per level with the reference step 6.2e-6 (1.24e-5 in our convention), final denoising step.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.random_flip = True

    config.model.name = "ncsnv2"
    config.model.ngf = 128
    config.model.sigma_max = 50.0
    config.model.sigma_min = 0.01
    config.model.num_scales = 232
    config.model.ema_rate = 0.999

    config.training.n_iters = 300_001
    config.training.batch_size = 128
    config.training.snapshot_freq = 5000

    config.optim.lr = 1e-4

    config.sampling.n_steps_each = 5
    config.sampling.step_lr = 2 * 6.2e-6
    config.sampling.denoise = True
    config.sampling.batch_size = 100
    return config
