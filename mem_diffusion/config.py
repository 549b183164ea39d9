"""Experiment configs: loading, `--set` overrides, validation (the resume guard:
mem_diffusion/config_guard.py).

A config holds the keys of configs/default.py. What a user can get wrong in one
is refused before anything is built, in one ConfigError line naming the key
(exit 2), not minutes later in a jitted function or as a silently wrong run.
Keys and types are ml_collections' own checks (a locked config refuses a new
key, a typed field another type); bounds only where a bad value would fail late
or silently (docs/reliability.md, "Config limits"); then the rules between keys.
Importing this module loads neither JAX nor TensorFlow: CLIs read configs before
their flags set JAX up.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import itertools
import math
import os
import re
import sys
from typing import Any, Mapping

from absl import flags
from ml_collections import ConfigDict, config_flags

from mem_diffusion.errors import ConfigError

# The checkout that holds mem_diffusion/ also holds configs/.
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "default.py")

MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits of a seed: key(2**32) == key(0)
SEED_WHY = "JAX keys keep only 32 bits: seed 2**32 would repeat seed 0"
MAX_BATCH = 65_536
MAX_IMAGES = 1_000_000
MAX_TRAIN_SET_BYTES = 64 * 2**30  # past this the build swaps or is killed after minutes

# ---------------------------------------------------------------------------
# Loading and overrides.

_module_ids = itertools.count()  # a fresh module per load: no two loads share state


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'training.batch_size': 128, ...} of a ConfigDict or dict; tuples as lists (as JSON)."""
  if isinstance(config, ConfigDict):
    config = config.to_dict()
  out = {}
  for k, v in config.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, (tuple, list)) else v
  return out


def _last_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__


def load_config(spec: str) -> ConfigDict:
  """'path/to/file.py[:arg]' -> get_config(arg), locked as config flags lock it. The
  file's repository root goes on sys.path: `from configs import default` works anywhere."""
  path, _, arg = spec.partition(":")
  if not (os.path.isfile(path) and path.endswith(".py")):  # /dev/null, a folder: no config
    why = ("not found" if not os.path.exists(path) else "is not a file" if not
           os.path.isfile(path) else "is not Python (expected a .py file)")
    raise ConfigError(f"config file {path!r} {why}")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  try:
    module_spec = importlib.util.spec_from_file_location(
        f"_mem_diffusion_config_{next(_module_ids)}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path!r} failed to import ({_last_line(e)})") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path!r} defines no get_config() function")
  try:
    config = get_config(arg) if arg else get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{path}: get_config({arg!r}) failed ({_last_line(e)})") from None
  if not isinstance(config, ConfigDict):
    raise ConfigError(f"{path}: get_config({arg!r}) returned {type(config).__name__}, "
                      "not an ml_collections.ConfigDict")
  config.lock()
  return config


def apply_override(config: ConfigDict, assignment: str) -> None:
  """'a.b=value' as ml_collections parses main.py's `--config.a.b=value`; locks `config`."""
  key, sep, raw = assignment.partition("=")
  if not sep:
    raise ConfigError(f"--set {assignment!r}: expected key=value")
  argv = ["--set", f"--config.{assignment}"]
  flag_values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
  except (KeyError, AttributeError, flags.Error, ValueError, TypeError):
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):  # where the key stops (' a.b ' too: no stripping)
      if not (isinstance(node, ConfigDict) and part in node):
        what = (f"no config section {part!r}" if i < len(parts) - 1
                else f"unknown config key {key!r}")
        raise ConfigError(f"--set {assignment!r}: {what}") from None
      node = node[part]
    raise ConfigError(f"--set {assignment!r}: {raw!r} is not a valid {type(node).__name__} "
                      f"for {key}") from None


@functools.lru_cache(maxsize=1)
def schema() -> ConfigDict:
  """configs/default.py's config, locked: every key with its type (shared: copy it)."""
  if not os.path.isfile(SCHEMA_FILE):
    raise ConfigError(f"the config schema {SCHEMA_FILE} is missing: configs are checked "
                      "against it; run from a full checkout of the repository")
  try:
    return load_config(SCHEMA_FILE)
  except ConfigError as e:
    raise ConfigError(f"the config schema cannot be loaded: {e}") from None


# ---------------------------------------------------------------------------
# Validation.

def _bad(key: str, value: Any, allowed: str, why: str = "") -> None:
  raise ConfigError(f"{key}={value!r}: expected {allowed}" + (f"; {why}" if why else ""))


def _int(key: str, v: Any, lo: int, hi: int | None = None, why: str = "", each=False) -> None:
  """lo <= v <= hi (no upper bound when hi is None); `each`: every element of v."""
  if not all(isinstance(x, int) and not isinstance(x, bool) and lo <= x
             and (hi is None or x <= hi) for x in (v if each else (v,))):
    fmt = lambda x: f"{x:_}" if abs(x) >= 10**5 else str(x)  # 65536, 1_000_000
    allowed = f"an integer in {fmt(lo)}..{fmt(hi)}" if hi is not None else f"an integer >= {lo}"
    _bad(key, v, "each " + allowed if each else allowed, why)


def _real(key: str, v: Any, interval: str, why: str = "") -> None:
  """v in `interval`, written as the message shows it: '[0, 1)', '(0, 1]'."""
  lo, hi = (float(x) for x in interval[1:-1].split(","))
  if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and (lo < v if interval[0] == "(" else lo <= v)
          and (v < hi if interval[-1] == ")" else v <= hi)):
    _bad(key, v, f"a finite number in {interval}", why)


def _one_of(key: str, v: Any, choices: tuple[Any, ...], why: str = "") -> None:
  if v not in choices:
    _bad(key, v, "one of " + ", ".join(map(repr, choices)), why)


def _assign(reference: ConfigDict, config: Any, prefix: str = "") -> None:
  """Each value of `config` into the locked `reference`, where ml_collections
  refuses a key it does not hold (KeyError) and a value of another type (TypeError)."""
  for name, value in config.items():
    key, default = prefix + name, reference.get(name)
    try:
      if isinstance(default, ConfigDict) and isinstance(value, (Mapping, ConfigDict)):
        _assign(default, value, key + ".")
        continue
      reference[name] = value
      # ml_collections lets None into any field, and a bool into an int one.
      if value is None or isinstance(value, bool) != isinstance(default, bool):
        raise TypeError(key)
    except KeyError:
      raise ConfigError(f"unknown config key {key!r}") from None
    except TypeError:
      shown = value.to_dict() if isinstance(value, ConfigDict) else value
      raise ConfigError(f"{key}={shown!r} has type {type(value).__name__}, "
                        f"expected {type(default).__name__}") from None


def validate_config(config: ConfigDict, *, data_checks: bool = True) -> None:
  """Raises ConfigError naming the first bad key. Reads the config only (no data,
  no compile); `data_checks` is ignored (the data rules no longer load TensorFlow)."""
  del data_checks
  # pylint: disable-next=g-import-not-at-top
  from mem_diffusion.diffusion import gaussian, schedules, timestep_samplers
  from mem_diffusion.data import train_set  # pylint: disable=g-import-not-at-top
  reference = copy.deepcopy(schema())
  _assign(reference, config)
  missing = sorted(set(flatten(reference)) - set(flatten(config)))
  if missing:
    raise ConfigError(f"missing config key(s): {', '.join(missing)}")
  if not config.name:
    raise ConfigError("name='': expected a non-empty string (it names the run's folders)")
  _int("seed", config.seed, 0, MAX_SEED, SEED_WHY)
  validate_data_config(config.data)
  validate_model_config(config.model, config.data.image_size)
  d, t, s, e = config.diffusion, config.training, config.sampling, config.eval
  _int("diffusion.steps", d.steps, 2, 100_000, "the schedule is built on the host: 10**12 hung")
  _one_of("diffusion.schedule", d.schedule, schedules.SCHEDULES)
  _one_of("diffusion.loss", d.loss, gaussian.LOSS_TYPES)
  _one_of("diffusion.timestep_sampler", d.timestep_sampler, timestep_samplers.NAMES)
  _int("training.batch_size", t.batch_size, 1, MAX_BATCH, "the global batch")
  _int("training.num_steps", t.num_steps, 1, 100_000_000, "0 trains nothing (see --mode)")
  _real("training.learning_rate", t.learning_rate, "(0, 1]", "Adam steps this large diverge")
  _real("training.weight_decay", t.weight_decay, "[0, 1]")
  _real("training.ema_decay", t.ema_decay, "[0, 1)", "1 would freeze the EMA")
  _int("training.micro_batches", t.micro_batches, 1)
  _real("training.loss_scale", t.loss_scale, "(0, 1000]", "1 = the mean loss of the batch")
  if t.batch_size % t.micro_batches:
    raise ConfigError(f"training.batch_size={t.batch_size} must be divisible by "
                      f"training.micro_batches={t.micro_batches}")
  _int("training.log_every", t.log_every, 1)
  _int("training.checkpoint_every", t.checkpoint_every, 1)
  _int("training.keep_checkpoints", t.keep_checkpoints, 1, 1000)
  _int("training.sample_grid_every", t.sample_grid_every, 0, None, "0 = no periodic grid")
  _int("training.grid_num_samples", t.grid_num_samples, 1, 1024, "sampled in one batch")
  _int("sampling.num_samples", s.num_samples, 2, MAX_IMAGES, "quality needs 2; held in memory")
  _int("sampling.batch_size", s.batch_size, 1, MAX_BATCH)
  _real("sampling.eta", s.eta, "[0, 1]", "above 1 DDIM's noise gives NaN images")
  _int("sampling.label", s.label, -1, 999, "-1 = every class in turn")
  _int("sampling.seed", s.seed, 0, MAX_SEED, SEED_WHY)
  _int("sampling.dummy_label_samples", s.dummy_label_samples, 0, MAX_IMAGES, "held in memory")
  if s.dummy_label_samples > s.num_samples - 2:
    raise ConfigError(f"sampling.dummy_label_samples={s.dummy_label_samples}: at most "
                      f"sampling.num_samples - 2 = {s.num_samples - 2} (the rest are the "
                      "original class's samples)")
  _real("eval.ratio_threshold", e.ratio_threshold, "(0, 1)", "the study uses 1/3")
  _int("eval.blend_k", e.blend_k, 0, 1000, "0 = no blend test")
  if e.blend_k == 1:
    raise ConfigError("eval.blend_k=1: expected 0 (no blend test) or an integer >= 2")
  _int("eval.num_heldout", e.num_heldout, 1, 100_000, "held in host memory")
  _real("eval.dup_rms", e.dup_rms, "[0, 16]", "RMS pixel difference; 255 merges every image")
  _int("eval.every_steps", e.every_steps, 0, None, "0 = no over-training curve")
  _int("eval.every_num_samples", e.every_num_samples, 2, MAX_BATCH, "sampled in one chunk")

  # Rules between sections.
  classes, label, labels = config.model.num_classes, s.label, train_set.num_classes(config.data)
  if classes and classes < labels:
    raise ConfigError(f"model.num_classes={classes}: the train set has {labels} labels")
  if classes and label >= classes:
    raise ConfigError(f"sampling.label={label}: must be < model.num_classes={classes}")
  if label == -1 and not classes:
    raise ConfigError("sampling.label=-1 (every class in turn) needs a class-conditional "
                      "model: set model.num_classes > 0 or sampling.label=0")
  if s.dummy_label_samples and not (classes and config.data.dummy_kind not in ("", "cars")
                                     and label >= 0):
    raise ConfigError(
        f"sampling.dummy_label_samples={s.dummy_label_samples} needs a class-conditional "
        "model with a labelled dummy kind (gm, hybrid, geometric) and sampling.label >= 0")
  _check_respacing("sampling.respacing", s.respacing, d.steps)
  # A chain this run never builds is checked for its spelling only.
  _check_respacing("training.grid_respacing", t.grid_respacing, t.sample_grid_every and d.steps)
  _check_respacing("eval.every_respacing", e.every_respacing, e.every_steps and d.steps)


def validate_data_config(c: ConfigDict) -> None:
  """The data section alone (the train-set builder runs it too); loads no data."""
  # pylint: disable-next=g-import-not-at-top
  from mem_diffusion.data import cifar, generators, train_set as ts
  _one_of("data.dataset", c.dataset, ts.DATASETS)
  _one_of("data.dummy_kind", c.dummy_kind, ts.DUMMY_KINDS, "'' = no dummy images")
  _one_of("data.sampling", c.sampling, ts.SAMPLING)
  _one_of("data.hybrid_mask", c.hybrid_mask, generators.HYBRID_MASKS)
  _int("data.num_original", c.num_original, 1, MAX_IMAGES, "held in host memory")
  _int("data.num_dummy", c.num_dummy, 0, MAX_IMAGES, "held in host memory")
  _int("data.image_size", c.image_size, 8, 512, "absurd sizes aborted XLA (SIGABRT)")
  _int("data.seed", c.seed, 0, MAX_SEED, SEED_WHY)
  _int("data.random_labels", c.random_labels, 0, 1000, "0 = off, k >= 2 = k random classes")
  _real("data.hybrid_cutoff", c.hybrid_cutoff, "(0, 1]", "the car's share of the spectrum")
  _real("data.original_share", c.original_share, "(0, 1)", "'balanced' takes both kinds")
  _int("data.classes", c.classes, 0, cifar.NUM_CLASSES - 1, "CIFAR-10 class ids", each=True)
  _int("data.class_counts", c.class_counts, 1, MAX_IMAGES, "held in host memory", each=True)
  kind, n, cifar_n = c.dummy_kind, c.num_dummy, cifar.PER_CLASS
  classes, counts = tuple(c.classes), tuple(c.class_counts)
  if c.dataset not in ts.MONDRIAN_DATASETS and cifar.CIFAR_SIZE % c.image_size:
    raise ConfigError(f"data.image_size={c.image_size} must divide 32 with CIFAR images")
  if bool(kind) != bool(n):
    raise ConfigError(f"data.dummy_kind={kind!r} needs data.num_dummy > 0" if kind
                      else f"data.num_dummy={n} needs a data.dummy_kind")
  if c.sampling == "balanced" and not n:
    raise ConfigError("data.sampling='balanced' needs dummies (data.num_dummy > 0)")
  if c.random_labels == 1:
    raise ConfigError("data.random_labels=1: expected 0 (off) or k >= 2 random classes")
  if c.random_labels and (n or c.dataset not in ("cifar_cars", "mondrian")):
    raise ConfigError(f"data.random_labels={c.random_labels} relabels a single-class train "
                      "set without dummies ('mondrian' or 'cifar_cars', data.num_dummy=0)")
  if kind == "cars" and c.dataset != "cifar_cars":
    raise ConfigError(f"data.dummy_kind='cars' needs data.dataset='cifar_cars', not {c.dataset!r}")
  if kind == "hybrid" and c.dataset == "cifar_classes":
    raise ConfigError("data.dummy_kind='hybrid' takes its low frequencies from the car pool "
                      "of 'cifar_cars' or from held-out Mondrians, not from 'cifar_classes'")
  if c.dataset == "mondrian_classes" and len(counts) != ts.MONDRIAN_CLASSES:
    raise ConfigError(f"data.class_counts={counts}: 'mondrian_classes' needs 2 (Mondrian, earth)")
  if c.dataset == "cifar_classes":
    if not classes or len(classes) != len(counts):
      raise ConfigError(f"data.classes {classes} and data.class_counts {counts} must be "
                        "non-empty and of the same length")
    if len(set(classes)) != len(classes):
      raise ConfigError(f"data.classes={classes}: distinct CIFAR-10 ids in 0..9")
    if max(counts) > cifar_n:
      raise ConfigError(f"data.class_counts={counts}: CIFAR-10 has {cifar_n} images per class")
  if c.dataset == "cifar_cars" and c.num_original > cifar_n:
    raise ConfigError(f"data.num_original={c.num_original}: CIFAR-10 has {cifar_n} cars")
  pool = cifar_n - c.num_original
  if kind in ts.CAR_BASED_DUMMIES and c.dataset == "cifar_cars" and n > pool:
    raise ConfigError(f"data.num_dummy={n} {kind} dummies need that many pool cars, but the "
                      f"pool holds {pool} (6000 cars - data.num_original={c.num_original})")
  rows = ts.num_images(c)
  size = rows * c.image_size**2 * 3
  if size > MAX_TRAIN_SET_BYTES:
    raise ConfigError(f"data.num_original + data.num_dummy: {rows} images of "
                      f"{c.image_size}x{c.image_size} take {size / 2**30:.0f} GiB of host "
                      f"memory (limit {MAX_TRAIN_SET_BYTES // 2**30} GiB)")


def validate_model_config(m: ConfigDict, image_size: int) -> None:
  """The UNet's section; unet_from_config runs it too, so that a model the
  reference would crash on is refused with the key to change, not in an init."""
  # pylint: disable-next=g-import-not-at-top
  from mem_diffusion.models import layers, unet
  mult, mc, heads = tuple(m.channel_mult), m.model_channels, m.num_heads
  _int("model.model_channels", mc, 1, 1024, "also a multiple of the GroupNorm groups")
  _int("model.channel_mult", mult, 1, 8, "channels of each level / model_channels", each=True)
  if not 1 <= len(mult) <= 7:  # 64x downsampling already takes a 512 image to 8 pixels
    raise ConfigError(f"model.channel_mult={mult}: expected 1..7 levels")
  _int("model.num_res_blocks", m.num_res_blocks, 1, 16)
  _int("model.num_heads", heads, 1, 1024)
  _real("model.dropout", m.dropout, "[0, 1)", "1 would drop every activation")
  _int("model.num_classes", m.num_classes, 0, 1000, "0 = unconditional")
  if m.num_classes == 1:
    raise ConfigError("model.num_classes=1: use 0 (unconditional) or >= 2")
  _one_of("model.compute_dtype", m.compute_dtype, unet.COMPUTE_DTYPES)
  factor = 2 ** (len(mult) - 1)
  if image_size % factor:
    raise ConfigError(f"data.image_size={image_size} is not divisible by "
                      f"2**(len(channel_mult)-1)={factor} (model.channel_mult={mult})")
  for k in sorted(set(mult)):
    if k * mc % layers.NUM_GROUPS:
      raise ConfigError(f"model.model_channels={mc} x channel_mult {k} = {k * mc} channels "
                        f"is not divisible by the {layers.NUM_GROUPS} GroupNorm groups")
  for rate in unet.attention_rates(m, image_size):
    channels = mc * mult[rate.bit_length() - 1]
    if channels % heads:
      raise ConfigError(f"model.num_heads={heads} does not divide {channels} channels "
                        f"(model_channels={mc} x channel_mult {channels // mc}) of attention")


_RESPACING = re.compile(r"(?!(ddim)?[0,]+$)(|ddim\d+|\d+(,\d+)*)")  # not '0': no step at all


def _check_respacing(key: str, spec: Any, steps: int) -> None:
  """A spec the chain cannot take (e.g. '50' of 20 steps) would otherwise fail
  only when sampling starts, after training; steps=0 checks the spelling only."""
  if not isinstance(spec, str) or not _RESPACING.fullmatch(spec.strip()):
    raise ConfigError(f"{key}={spec!r}: expected '', 'N', 'ddimN' or 'a,b,c' keeping >= 1 step")
  if steps:
    from mem_diffusion.diffusion import respace  # pylint: disable=g-import-not-at-top
    try:
      if not respace.space_timesteps(int(steps), spec):  # '0': sampling would fail after training
        raise ValueError(f"keeps none of the {steps} steps; expected at least 1")
    except (ValueError, TypeError) as e:
      raise ConfigError(f"{key}={spec!r}: {str(e).splitlines()[0]}") from None


def check_devices(config: ConfigDict, num_devices: int) -> None:
  """Only training's batch must split over the devices: sampling pads exactly (run/sampling.py)."""
  b, unit = config.training.batch_size, num_devices * config.training.micro_batches
  if b % unit:
    raise ConfigError(f"training.batch_size={b} must be divisible by the number of devices "
                      f"({num_devices}) x training.micro_batches = {unit}, e.g. {b // unit * unit or unit}")
