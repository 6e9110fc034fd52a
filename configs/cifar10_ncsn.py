"""Original NCSN on CIFAR-10 (Song & Ermon 2019, ``ncsn/configs/anneal.yml``).

CondRefineNetDilated (ngf 128), sigma 1 -> 0.01 over 10 geometric levels, Adam 1e-3, no EMA, batch 128,
200k iterations; annealed Langevin with 100 steps per level, reference step 2e-5 (4e-5 in our convention),
no final denoising step.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.random_flip = True

    config.model.name = "ncsn"
    config.model.ngf = 128
    config.model.sigma_max = 1.0
    config.model.sigma_min = 0.01
    config.model.num_scales = 10
    config.model.ema_rate = 0.0  # NCSN kept no EMA: "EMA" weights are the weights
    config.model.normalization = "ConditionalInstanceNorm++"

    config.training.n_iters = 200_001
    config.training.batch_size = 128
    config.training.snapshot_freq = 5000

    config.optim.lr = 1e-3

    config.sampling.n_steps_each = 100
    config.sampling.step_lr = 2 * 2e-5
    config.sampling.denoise = False
    config.sampling.batch_size = 100
    return config
