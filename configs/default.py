"""IDDPM CIFAR-10 defaults: the base every experiment config builds on.

The values are those of improved-diffusion's CIFAR-10 command line plus the
script defaults it relies on (docs/reference.md#hyperparameters). Experiment files import
`get_config` from here, change only what the experiment varies, and accept the
config argument 'tiny' (a CPU-sized variant of the same experiment).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "default"
  config.seed = 0  # root of every random key: params, data order, noise, samples

  # ---- data ----------------------------------------------------------------
  data = config.data = ml_collections.ConfigDict()
  data.dataset = "cifar_cars"  # 'cifar_cars' | 'mondrian' | 'cifar_classes' | 'mondrian_classes'
  data.num_original = 2000  # images of the original (real) class in the train set
  data.dummy_kind = ""  # '' | 'gm' | 'hybrid' | 'cars' | 'geometric'
  data.num_dummy = 0  # size of the fixed dummy set
  data.image_size = 32
  data.seed = 0  # which images / which dummy set (independent of config.seed)
  data.tfds_data_dir = ""  # '' = TFDS_DATA_DIR or tfds's default
  data.download = True  # fetch CIFAR-10 through tfds when missing; False on air-gapped machines
  data.hybrid_cutoff = 0.25  # the car's share of the spectrum ("25% low frequency of a car")
  # How hybrid_cutoff is read (docs/data.md, "Hybrid"): 'bin_fraction' = the car
  # gives the lowest-|k| cutoff * S^2 frequency bins (256 of 1,024 at 32x32);
  # 'corner_radius' = |k| <= cutoff * S/sqrt(2) (101 bins; the rule before this
  # key existed); 'nyquist_radius' = |k| <= cutoff * S/2 (49 bins).
  data.hybrid_mask = "bin_fraction"
  data.sampling = "uniform"  # 'uniform' over the mixed set | 'balanced'
  data.original_share = 0.5  # 'balanced': share of each batch from the original class
  data.hflip = False  # the reference uses no augmentation
  # k >= 2: label every original image with a class drawn uniformly from k
  # (seeded by data.seed), for a conditional model whose labels carry no
  # information: the conditioning control of docs/results.md. 0 = off.
  data.random_labels = 0
  # 'cifar_classes': CIFAR-10 class ids and per-class counts (same length);
  # 'mondrian_classes': class_counts = (Mondrians, earth-palette Mondrians).
  data.classes = (1,)
  data.class_counts = (2000,)

  # ---- model (improved-diffusion UNetModel) --------------------------------
  model = config.model = ml_collections.ConfigDict()
  model.model_channels = 128
  model.channel_mult = (1, 2, 2, 2)
  model.num_res_blocks = 3
  model.attention_resolutions = (16, 8)  # in pixels, as the reference script
  model.num_heads = 4
  model.dropout = 0.3
  model.use_scale_shift_norm = True
  model.learn_sigma = True  # 6 output channels: epsilon and the variance value v
  model.conv_resample = True
  model.num_classes = 0  # 0 = unconditional
  model.compute_dtype = "float32"  # 'float32' | 'bfloat16' (params stay float32)

  # ---- diffusion -----------------------------------------------------------
  diffusion = config.diffusion = ml_collections.ConfigDict()
  diffusion.steps = 4000
  diffusion.schedule = "cosine"  # 'cosine' | 'linear'
  diffusion.loss = "hybrid"  # 'hybrid' | 'mse' | 'kl'
  diffusion.predict_xstart = False  # False: the network predicts epsilon
  diffusion.sigma_small = False  # without learned sigma: fixed_small vs fixed_large
  diffusion.rescale_timesteps = True  # the network sees t * 1000 / steps
  diffusion.timestep_sampler = "uniform"  # 'uniform' | 'loss_second_moment'

  # ---- training ------------------------------------------------------------
  training = config.training = ml_collections.ConfigDict()
  training.batch_size = 128  # global batch over all devices and processes
  training.num_steps = 100_000
  training.learning_rate = 1e-4
  training.weight_decay = 0.0
  training.ema_decay = 0.9999
  training.micro_batches = 1
  # Multiplies the loss before the gradient. 2 with 'balanced' batches of 2B
  # gives each original row the 1/B weight it has in a no-dummy batch of B
  # (docs/results.md, "Dummies fill capacity"); Adam sees the scale only
  # through its eps.
  training.loss_scale = 1.0
  training.log_every = 100
  training.checkpoint_every = 5000
  training.keep_checkpoints = 3
  training.sample_grid_every = 10_000  # 0 disables the periodic grid
  training.grid_num_samples = 16  # images in the periodic grid (EMA params)
  training.grid_respacing = "100"  # short chain for the grid; "" = all steps

  # ---- sampling ------------------------------------------------------------
  sampling = config.sampling = ml_collections.ConfigDict()
  sampling.num_samples = 4000
  sampling.batch_size = 500  # images per jitted chunk over all devices
  sampling.respacing = ""  # '' = the full chain; '250', 'ddim250', '10,10,5'
  sampling.use_ddim = False
  sampling.eta = 0.0
  sampling.clip_denoised = True
  sampling.label = 0  # class-conditional models sample the original class
  # The last k of the num_samples samples get the dummy label instead, so the
  # dummy class's own replicate ratio is measured (eval report 'dummy_label');
  # the headline ratio counts only the others. 0 = none.
  sampling.dummy_label_samples = 0
  sampling.seed = 0
  # A msgpack params file from `python -m mem_diffusion.convert` (e.g. the released
  # improved-diffusion CIFAR-10 model); '' = the EMA params of the workdir's checkpoint.
  sampling.params_file = ""

  # ---- evaluation ----------------------------------------------------------
  evaluation = config.eval = ml_collections.ConfigDict()
  evaluation.ratio_threshold = 1 / 3
  evaluation.blend_k = 8
  # Duplicate-aware ratio only (replicate_ratio_dedup): training images whose
  # RMS pixel difference (0..255) is <= this are merged before the d1/d2 test;
  # 0 = exact duplicates only. 2 levels is invisible. The seed's replicate_ratio
  # never merges.
  evaluation.dup_rms = 2.0
  evaluation.num_heldout = 1000  # real images of the original class for the quality figure
  # Memorization over training (mem_diffusion/run/over_training.py): every this many
  # steps, sample every_num_samples images from the EMA params with the respaced
  # ancestral chain every_respacing and score them; 0 = off. 20 points of 256
  # samples x 250 steps cost ~3% of the 100k-step run's forward passes. Not DDIM:
  # at toy scale DDIM halved the replicate ratio (docs/results.md, "Chains").
  evaluation.every_steps = 5000
  evaluation.every_num_samples = 256
  evaluation.every_respacing = "250"

  if arg == "tiny":
    apply_tiny(config)
  elif arg:
    raise ValueError(f"default.py: unknown config argument {arg!r} (expected '' or 'tiny')")
  return config


def apply_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks an experiment to CPU size while keeping what it varies.

  Sizes of the train set are divided by ten, images become 16x16, the UNet
  becomes a two-level model with 32 channels, and the chain 100 steps.
  """
  config.data.image_size = 16
  config.data.num_original = max(config.data.num_original // 10, 8)
  config.data.num_dummy = config.data.num_dummy // 10
  config.data.class_counts = tuple(max(c // 10, 8) for c in config.data.class_counts)
  config.model.model_channels = 32
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (8,)
  config.model.num_heads = 2
  config.model.dropout = 0.0
  config.diffusion.steps = 100
  config.training.batch_size = 16
  config.training.num_steps = 200
  config.training.log_every = 20
  config.training.checkpoint_every = 100
  config.training.sample_grid_every = 0
  config.sampling.num_samples = 64
  config.sampling.batch_size = 32
  config.eval.num_heldout = 64
  config.eval.every_steps = 0  # off: a tiny run is too short for a curve
  return config
