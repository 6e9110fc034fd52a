"""A small U-Net on scikit-learn's 8×8 handwritten digits: an image model that trains and samples on a laptop CPU.

The 1,797 digit images ship inside scikit-learn, so nothing is downloaded. The noise schedule is computed from
the data with NCSNv2's techniques (``"auto"``): σ₁ from the largest pairwise distance, the number of levels
from the overlap criterion. The Langevin step size is set: ε = 1.2e-3 for T = 10 steps per level, 1.5× what
the step-size criterion (technique 4, ``step_lr = "auto"``) gives, measured against it below.

Why these choices (each measured with the digits metric, 1,000 samples, ``benchmarks/digits_quality.py``;
rows in ``benchmarks/results/digits_quality.json`` from a 2-core CPU with AVX-512 and
``digits_quality_avx2.json`` from one with AVX2 only, where this default trains and samples in under 3 minutes:
``benchmarks/results/embedded_defaults.json``):

* ``unet`` (:mod:`ncsn_jax.models.unet`) at ngf 32, its skip added rather than concatenated: a train step of
  ~52 ms on 2 AVX2 cores instead of ~95 ms, for 94.1 % of the real digits' Inception score after 2,500 steps
  (T = 10 and technique 4's ε for it) instead of 96.4 %. ngf 24 with the concatenated skip, as fast: 92.4 %.
  NCSNv2's RefineNet at ngf 16 reached 91 % after 3,000 steps and 525 s, a noise-conditional MLP (512³) 67-78 %.
* ``n_steps_each = 10``, ``step_lr = 1.2e-3``: on the same weights (2,500 steps, 1,000 samples per draw),
  three draws each (``--sample_seeds=7,11,12``, rows ``default_draws`` in ``digits_quality_avx2.json``) and
  ``main.py``'s eval: this setting scores IS 96.5, 97.3, 96.4, 96.9 % of the real digits' and Fréchet
  distance 3.91, 4.60, 4.05, 4.72 (the real split's own: 3.5 ± 0.4 by 1,000-digit bootstrap); technique 4's
  ε for T = 10 (7.9e-4) 94.1 % and 4.68 (one draw); T = 20 with its technique-4 ε (4.9e-4) 97.1, 96.7, 94.3,
  94.6 % and 3.44, 5.32, 4.44, 3.59.
  Single draws: T = 10 with ε = 1.6e-3 and 2.5e-3, IS 97.7 and 98.9 %, FD 4.55 and 4.34; T = 15 with 1.2e-3,
  99.1 % and 3.87; T = 20 with 8e-4 and 1.2e-3, 99.3 and 98.9 %, FD 4.10 and 4.68. Larger steps sharpen the
  digits and raise the Inception score; the Fréchet distance varies by ±0.8 between draws of the same weights.
* 2,500 steps at ``lr = 3e-3`` after a 100-step warm-up, EMA 0.99 (a ~100-step horizon for a short run):
  2,000 steps gave 95.3 % (T = 10, ε = 1.2e-3); with the concatenated skip (T = 10), 2e-3 gave 94.1 % against
  3e-3's 95.5 %, EMA 0.995 and a cosine decay of the learning rate were worse, and batch 64 for 2,500 steps
  92.7 %.
* ``sigma_min = 0.05``: the digits have 17 grey levels (a dequantised pixel bin is 0.06 wide), so finer levels
  only add sampling steps: L = 16 levels instead of 21 for 0.01.
* ``data_std = 0.3`` scales the input, ``(x − ½)/sqrt(data_std² + σ²)`` (the pixels' std is 0.38).
* No snapshot sampling during training: ``--mode=sample`` comes right after, and drawing snapshots (with the
  sampler's compilation) would take ~10 s of the 3 minutes.
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
    config.training.snapshot_sampling = False  # --mode=sample right after; see the docstring
    config.training.preemption_freq = 500
    config.training.steps_per_call = 1  # see train.make_multi_step: CPU conv nets

    config.optim.lr = 3e-3
    config.optim.warmup = 100

    config.sampling.batch_size = 64
    config.sampling.n_steps_each = 10
    config.sampling.step_lr = 1.2e-3  # technique 4 gives 7.9e-4 for T = 10; see the docstring
    config.sampling.denoise = True
    config.sampling.snapshot_batch_size = 36
    config.eval.num_samples = 1000  # the digits metric compares sets of equal size with bootstrap references
    config.eval.batch_size = 500
    config.eval.loss_examples = 180  # the whole test split
    return config
