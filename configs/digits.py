"""A small U-Net on scikit-learn's 8×8 handwritten digits: an image model that trains and samples on a laptop CPU.

The 1,797 digit images ship inside scikit-learn, so nothing is downloaded. The noise schedule and the Langevin
step size are computed from the data with NCSNv2's techniques (``"auto"``): σ₁ from the largest pairwise
distance, the number of levels from the overlap criterion, ε from the step-size criterion for T steps.

Why these choices (each measured with the digits metric, 1,000 samples, on 2 CPU cores with AVX-512 unless
said otherwise: ``benchmarks/results/digits_quality.json``, from ``benchmarks/digits_quality.py``):

* ``unet`` (:mod:`ncsn_jax.models.unet`) at ngf 32: 96 % of the real digits' Inception score after 2,500 steps
  (~140 s in-process; ``main.py`` train + sample 163 s, and 347 s on 2 cores with AVX2 only:
  ``benchmarks/results/embedded_defaults.json``). NCSNv2's RefineNet at ngf 16 reached 91 % after 3,000
  steps and 525 s (75 % after 1,000), a noise-conditional MLP (512³) 67-78 % whatever its steps, σ_min, T or
  ε, the U-Net at ngf 16 84-90 %.
* ``n_steps_each = 10`` with technique 4's ε: T = 5 is 2-3 points of the Inception score below, T = 20 no
  better (and a larger Fréchet distance).
* ``lr = 3e-3`` after a 100-step warm-up, EMA 0.99 (a ~100-step horizon for a short run): at 2,000 steps
  3e-3 gave 95.5 %, 2e-3 94.1 %, and at 2e-3 EMA 0.995 92.9 %, a cosine decay of the learning rate 91.6 %;
  2,000 steps with another seed 94.9 %, hence 2,500. Batch 64 for 2,500 steps (half the compute): 92.7 % (AVX2
  machine, ``benchmarks/results/digits_quality_avx2.json``).
* ``sigma_min = 0.05``: the digits have 17 grey levels (a dequantised pixel bin is 0.06 wide), so finer levels
  only add sampling steps: L = 16 levels instead of 21 for 0.01.
* ``data_std = 0.3`` scales the input, ``(x − ½)/sqrt(data_std² + σ²)`` (the pixels' std is 0.38).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "digits"
    config.data.image_size = 8
    config.data.num_channels = 1
    config.data.random_flip = False
    config.data.uniform_dequantization = True

    config.model.name = "unet"
    config.model.ngf = 32
    config.model.nonlinearity = "swish"
    config.model.data_std = 0.3
    config.model.sigma_max = "auto"
    config.model.sigma_min = 0.05
    config.model.num_scales = "auto"
    config.model.ema_rate = 0.99  # a short run: an EMA horizon of ~100 steps, not NCSNv2's ~1000

    config.training.n_iters = 2500
    config.training.batch_size = 128
    config.training.log_freq = 100
    config.training.snapshot_freq = 1000
    config.training.preemption_freq = 500
    config.training.steps_per_call = 1  # see train.make_multi_step: CPU conv nets

    config.optim.lr = 3e-3
    config.optim.warmup = 100

    config.sampling.batch_size = 64
    config.sampling.n_steps_each = 10
    config.sampling.step_lr = "auto"
    config.sampling.denoise = True
    config.sampling.snapshot_batch_size = 36
    config.eval.num_samples = 1000  # the digits metric compares sets of equal size with bootstrap references
    config.eval.batch_size = 500
    config.eval.loss_examples = 180  # the whole test split
    return config
