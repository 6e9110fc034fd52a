"""NCSNv2 on scikit-learn's 8×8 handwritten digits: an image model that trains and samples on a laptop CPU.

The 1,797 digit images ship inside scikit-learn, so nothing is downloaded. The noise schedule and the Langevin
step size are computed from the data with NCSNv2's techniques (``"auto"``): σ₁ from the largest pairwise
distance, the number of levels from the overlap criterion, ε from the step-size criterion.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "digits"
    config.data.image_size = 8
    config.data.num_channels = 1
    config.data.random_flip = False
    config.data.uniform_dequantization = True

    config.model.name = "ncsnv2"
    config.model.ngf = 16
    config.model.sigma_max = "auto"
    config.model.sigma_min = 0.01
    config.model.num_scales = "auto"
    config.model.ema_rate = 0.99  # a short run: an EMA horizon of ~100 steps, not NCSNv2's ~1000

    config.training.n_iters = 3000
    config.training.batch_size = 128
    config.training.log_freq = 100
    config.training.snapshot_freq = 1000
    config.training.preemption_freq = 500
    config.training.steps_per_call = 1  # see train.make_multi_step: CPU conv nets

    config.optim.lr = 1e-3
    config.optim.warmup = 100

    config.sampling.batch_size = 64
    config.sampling.n_steps_each = 5
    config.sampling.step_lr = "auto"
    config.sampling.denoise = True
    config.sampling.snapshot_batch_size = 36
    config.eval.num_samples = 1000  # the digits metric compares sets of equal size with bootstrap references
    config.eval.batch_size = 500
    config.eval.loss_examples = 180  # the whole test split
    return config
