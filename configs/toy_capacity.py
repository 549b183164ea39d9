"""CPU toy of the capacity experiment: N small Mondrian images, no dummies.

The toy scale keeps the study's design and shrinks everything
else so that a run takes about a minute on a 2-core laptop CPU:

- 8x8 Mondrian images: a quarter of the 16x16 cost, and Gu et al. found
  smaller images stay memorized to larger N, which is what a toy needs.
- A two-level UNet (32 and 64 channels, one res block per level, attention
  only at 4x4, no dropout), the IDDPM architecture otherwise unchanged
  (hybrid loss, learned sigma, scale-shift norm), ~0.7M parameters.
- 100 cosine diffusion steps; samples from a 50-step respaced ancestral chain
  (half the cost; a sample can only pass the d1/d2 < 1/3 test by being close
  to one training image, which a short chain cannot fake). The quickstart
  measured 0.98 replicates with the full chain at N = 16.
- Adam at lr 1e-3 (10x IDDPM's: a short run needs fast fitting; at 1e-4 a
  toy run ends before anything is memorized) and batch 16.
- EMA decay 0.99 (averaging horizon ~100 steps). IDDPM's 0.9999 averages over
  ~10k steps: in a 2k-step run the EMA would still be mostly the random
  initialisation and sample noise.
Memorization is then a matter of the training budget per image: at N = 16
every image is seen ~2k times and copied; at N = 1024 ~30 times and not.

Argument: comma-separated tokens,
  N or n=N     train-set size (default 16)
  steps=S      training steps (default TOY_STEPS)
  cond=C       'one': a class-conditional model (model.num_classes = 2, as the
               dummy runs) whose images all carry label 0; 'random': each image
               gets a random label in {0, 1} (data.random_labels = 2) and
               samples take both labels in turn. The conditioning control of
               docs/results.md: the dummy runs are conditional, so their
               no-dummy baseline must be too. Default: unconditional.
  tiny         test-sized: 300 steps, 32 samples (tests/test_sweep.py)
  bf16         bfloat16 compute (every config file takes it: configs/_common.py)
e.g. `--config=configs/toy_capacity.py:256`. The run's name is
`toy_capacity_<N>`, then `_s<S>` when S != TOY_STEPS and `_cond` / `_rand2`
for cond=one / cond=random: the name is the
default workdir of a sweep, so two settings must never share one.
"""

import ml_collections

from configs import _common

TOY_IMAGE_SIZE = 8
TOY_STEPS = 2000
TOY_SAMPLES = 128
_CONDITIONING = {"none": "", "one": "_cond", "random": "_rand2"}  # cond= -> name suffix


def apply_toy(config: ml_collections.ConfigDict, *, steps: int = TOY_STEPS,
              tiny: bool = False) -> ml_collections.ConfigDict:
  """The toy model, schedule and budget on top of an experiment config."""
  config.data.image_size = TOY_IMAGE_SIZE
  m = config.model
  m.model_channels = 32
  m.channel_mult = (1, 2)
  m.num_res_blocks = 1
  m.attention_resolutions = (TOY_IMAGE_SIZE // 2,)
  m.num_heads = 2
  m.dropout = 0.0
  config.diffusion.steps = 100
  t = config.training
  t.batch_size = 16
  t.num_steps = 300 if tiny else steps
  t.learning_rate = 1e-3
  t.ema_decay = 0.99
  t.log_every = 100
  t.checkpoint_every = t.num_steps  # one save at the end: saves cost seconds on CPU
  t.keep_checkpoints = 1
  t.sample_grid_every = 0
  s = config.sampling
  s.num_samples = 32 if tiny else TOY_SAMPLES
  s.batch_size = 32 if tiny else 64
  s.respacing = "50"
  config.eval.num_heldout = 256
  # Over training: 8 points of 64 samples on a 25-step chain (~10% of a toy run;
  # 25 of 100 steps read 0.953 where the full chain reads 0.996: docs/results.md).
  config.eval.every_steps = 0 if tiny else max(config.training.num_steps // 8, 1)
  config.eval.every_num_samples = 64
  config.eval.every_respacing = "25"
  return config


def parse_steps(opts: dict[str, str], file: str) -> int:
  try:
    steps = int(opts.get("steps", TOY_STEPS))
  except ValueError:
    raise ValueError(f"{file}: steps={opts['steps']!r} is not an integer") from None
  if steps <= 0:
    raise ValueError(f"{file}: steps must be positive, got {steps}")
  return steps


def steps_suffix(steps: int) -> str:
  """The name's part for a non-default step count ('' for TOY_STEPS)."""
  return "" if steps == TOY_STEPS else f"_s{steps}"


@_common.precision_arg
def get_config(arg: str = ""):
  file = "configs/toy_capacity.py"
  tiny, opts = _common.parse_arg(arg, file, keys=("n", "steps", "cond"), positional="n")
  try:
    n = int(opts.get("n", "16"))
  except ValueError:
    raise ValueError(f"{file}: n={opts['n']!r} is not an integer") from None
  if n < 2:
    raise ValueError(f"{file}: the train-set size must be >= 2, got {n}")
  steps = parse_steps(opts, file)
  cond = opts.get("cond", "none")
  if cond not in _CONDITIONING:
    raise ValueError(f"{file}: cond={cond!r} must be one of {tuple(_CONDITIONING)}")
  config = _common.build(f"toy_capacity_{n}{steps_suffix(steps)}{_CONDITIONING[cond]}", False,
                         dataset="mondrian", num_original=n, conditional=cond != "none")
  if cond == "random":
    config.data.random_labels = 2
    config.sampling.label = -1  # both labels in turn: every image's label is sampled
  return apply_toy(config, steps=steps, tiny=tiny)
