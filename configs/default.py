"""Base config: every field any experiment may set, with NCSNv2's CIFAR-10 choices as defaults.

Experiment files (``configs/cifar10.py`` …) start from :func:`get_config` here and override what differs.
Every field can be overridden on the command line, e.g. ``--config.training.batch_size=8``.

Fields that accept ``"auto"`` (``model.sigma_max``, ``model.num_scales``, ``sampling.step_lr``) are computed
from the training data with NCSNv2's techniques (see :mod:`ncsn_jax.noise`) when training starts; the chosen
values are logged and stored in the checkpoint so that sampling uses the same ones.
"""

import ml_collections
from ml_collections import config_dict


def number_or_auto(value):
    """A field that holds a number or the string ``"auto"`` (both settable from the command line)."""
    return config_dict.FieldReference(value, field_type=object)


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42

    # ---- data -------------------------------------------------------------------------------------------
    config.data = data = ml_collections.ConfigDict()
    data.dataset = "cifar10"  # toy | digits | cifar10 | mnist | celeba
    data.image_size = 32
    data.num_channels = 3
    data.random_flip = True
    data.uniform_dequantization = False
    data.centered = False  # False: images in [0, 1] (models map them to 2x - 1 inside)
    data.data_dir = ""  # TFDS data_dir; "" means TFDS's default (~/tensorflow_datasets)

    # ---- model ------------------------------------------------------------------------------------------
    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnv2"  # ncsn | ncsnv2 | ncsnv2_deeper | ncsnv2_deepest | mlp | unet
    model.sigma_max = number_or_auto(50.0)
    model.sigma_min = 0.01
    model.num_scales = number_or_auto(232)
    model.ema_rate = 0.999
    model.ngf = 128
    model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    model.normalization = "InstanceNorm++"
    model.nonlinearity = "elu"  # elu | relu | swish … (models.layers.ACTIVATIONS)
    # Only for name="mlp" (data_std also for name="unet"):
    model.hidden_dims = (128, 128, 128)
    model.sigma_conditioning = "embedding"  # embedding (log sigma) | scale (f(x)/sigma) | none (num_scales=1)
    model.data_std = 1.0  # typical per-coordinate scale of the data (input rescaling of the MLP and U-Net)

    # ---- training ---------------------------------------------------------------------------------------
    config.training = training = ml_collections.ConfigDict()
    training.n_iters = 300_001
    training.batch_size = 128  # global batch, split over all devices of all processes
    training.loss = "dsm"  # dsm | ssm | ssm_vr | exact   (see ncsn_jax.losses.get_loss_fn)
    training.anneal_power = 2.0  # lambda(sigma) = sigma ** anneal_power
    training.n_projections = 1  # sliced objectives only
    training.projection = "rademacher"
    training.log_freq = 100
    training.eval_freq = 0  # held-out DSM loss per sigma every eval_freq steps (TensorBoard eval/); 0: never
    training.snapshot_freq = 5000  # periodic checkpoint (kept) and sample snapshot
    training.snapshot_sampling = True
    training.keep_checkpoints = 5
    training.preemption_freq = 500  # frequent checkpoint that only the latest is kept of
    # Train steps per host->device call (lax.scan over stacked batches): >1 saves host round trips on
    # GPU/TPU; keep 1 for conv nets on CPU (see ncsn_jax.train.make_multi_step).
    training.steps_per_call = 1
    training.nonfinite_tolerance = (
        0  # non-finite losses/grads skipped before training stops (0: stop at once)
    )

    # ---- optimisation -----------------------------------------------------------------------------------
    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"
    optim.lr = 1e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 0  # linear learning-rate warm-up steps
    optim.grad_clip = 0.0  # global-norm clipping; 0 disables

    # ---- sampling ---------------------------------------------------------------------------------------
    # step_lr is in OUR convention x <- x + (a/2) s + sqrt(a) z: twice the reference code's value.
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "annealed_langevin"  # annealed_langevin | pc | ode | inpainting | interpolation
    # --mode=sample draws the same samples for the same seed (bit for bit); another seed, new ones. Output:
    # workdir/samples/<step>/<method>-seed<seed>/.
    sampling.seed = 0
    sampling.batch_size = 100  # chains run in parallel (one jit call)
    sampling.num_samples = 0  # --mode=sample: 0 draws one batch; N > 0 draws N in rounds of batch_size
    sampling.n_steps_each = 5
    sampling.step_lr = number_or_auto(1.24e-5)
    sampling.denoise = True
    sampling.use_ema = True
    sampling.init = "uniform"  # uniform on init_range | gaussian (N(0, sigma_1^2 I))
    sampling.init_range = (0.0, 1.0)
    sampling.trajectory_every = 0  # >0: also save every k-th iterate (trajectory strip)
    sampling.n_interpolations = 15
    sampling.snapshot_batch_size = 36  # samples drawn at each training snapshot
    # method="pc" / "ode": the VE SDE of the noise schedule (ncsn_jax.sde), started from N(0, sigma_1^2 I).
    sampling.num_steps = 0  # SDE discretisation levels; 0: the model's own sigma table (needed by NCSN v1)
    sampling.predictor = "reverse_diffusion"  # reverse_diffusion | ancestral | euler_maruyama | none
    sampling.corrector = "langevin"  # langevin | none
    sampling.snr = 0.16  # the Langevin corrector's signal-to-noise ratio (score_sde)
    sampling.n_steps_corrector = 1
    sampling.ode_solver = "tsit5"  # tsit5 | dopri5 (diffrax, adaptive)
    sampling.ode_rtol = 1e-5
    sampling.ode_atol = 1e-5
    sampling.ode_eps = 1e-5  # the ODE stops at t = eps (sigma(eps) ~ sigma_min)
    sampling.checkpoint = "latest"  # --mode=sample: "latest" or a checkpoint step such as "12000"

    # ---- evaluation (--mode=eval, --mode=fid_stats; see ncsn_jax.evaluate) ------------------------------
    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.checkpoints = "latest"  # latest | all | a step "12000" | a range "5000:20000"
    evaluation.num_samples = 50_000  # drawn with the EMA weights by config.sampling's method
    evaluation.batch_size = 1000  # samples per round (each round is kept on disk: preemption-safe)
    evaluation.inception_weights = "~/.cache/ncsn_jax/inception_fid.npz"  # see ncsn_jax.evaluation.inception
    evaluation.inception_batch_size = 100
    evaluation.stats_file = ""  # "": <data_dir>/fid_stats/<dataset>_<size>px_train.npz
    evaluation.kid_subset = 10_000  # feature vectors kept (reference and samples) for KID
    evaluation.loss_examples = 1000  # test examples of the held-out loss (also training.eval_freq)
    evaluation.likelihood = (
        False  # also bits/dim of the test split (probability-flow ODE, ncsn_jax.likelihood)
    )
    evaluation.likelihood_examples = 1000
    evaluation.likelihood_batch_size = 100
    evaluation.exact_divergence = False  # exact Jacobian trace (small D) instead of Hutchinson's estimate
    evaluation.n_projections = 1
    return config
