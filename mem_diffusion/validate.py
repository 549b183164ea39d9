"""Config validation before any compute, and the workdir config guard.

Every bad value raises ConfigError (a ValueError) whose message names the key,
so main.py can print one line and exit 2 instead of failing minutes later
inside a jitted function.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping

import ml_collections


from mem_diffusion.errors import ConfigError  # re-exported for callers


DATASETS = ("cifar_cars", "mondrian", "cifar_classes")
DUMMY_KINDS = ("", "gm", "hybrid", "cars", "geometric")
DATA_SAMPLING = ("uniform", "balanced")
SCHEDULES = ("cosine", "linear")
LOSSES = ("hybrid", "mse", "kl")
TIMESTEP_SAMPLERS = ("uniform", "loss_second_moment")
COMPUTE_DTYPES = ("float32", "bfloat16")
_RESPACING = re.compile(r"^(|ddim\d+|\d+(,\d+)*)$")

# Keys that may change between a run and its resumption without changing what
# the training computes up to the resumed step. Anything under a prefix ending
# in '.' matches the whole section.
SAFE_TO_CHANGE = (
    "name",
    "training.num_steps",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "training.sample_grid_every",
    "training.grid_num_samples",
    "training.grid_respacing",
    "data.tfds_data_dir",
    "data.download",
    "sampling.",
    "eval.",
)


def flatten(config: Mapping[str, Any] | ml_collections.ConfigDict,
            prefix: str = "") -> dict[str, Any]:
  """{'training.batch_size': 128, ...}, tuples/lists as lists (JSON-like)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  out = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, (tuple, list)) else v
  return out


def _schema() -> dict[str, Any] | None:
  try:
    from configs import default  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return flatten(default.get_config())


def _type_ok(value: Any, ref: Any) -> bool:
  if isinstance(ref, bool):
    return isinstance(value, bool)
  if isinstance(ref, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(ref, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(ref, str):
    return isinstance(value, str)
  if isinstance(ref, list):
    return isinstance(value, list)
  return True


def validate_config(config: ml_collections.ConfigDict, *,
                    data_checks: bool = True) -> None:
  """Raises ConfigError naming the first bad key; returns None when runnable.

  `data_checks=False` skips mem_diffusion.data's checks (and its TensorFlow
  import), for callers that never build the train set.
  """
  flat = flatten(config)
  schema = _schema()
  if schema is not None:
    unknown = sorted(set(flat) - set(schema))
    if unknown:
      raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    missing = sorted(set(schema) - set(flat))
    if missing:
      raise ConfigError(f"missing config key(s): {', '.join(missing)}")
    for k, ref in schema.items():
      if not _type_ok(flat[k], ref):
        raise ConfigError(
            f"{k}={flat[k]!r} has type {type(flat[k]).__name__}, expected "
            f"{type(ref).__name__}")

  def need(key: str, ok: bool, what: str) -> None:
    if not ok:
      raise ConfigError(f"{key}={flat.get(key)!r}: {what}")

  def one_of(key: str, choices: Iterable[str]) -> None:
    need(key, flat.get(key) in tuple(choices), f"expected one of {list(choices)}")

  def positive_int(key: str, minimum: int = 1) -> None:
    v = flat.get(key)
    need(key, isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
         f"expected an integer >= {minimum}")

  def finite(key: str, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    v = flat.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
      ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
    need(key, ok, f"expected a finite number in {lb}{lo}, {hi}{rb}")

  need("name", isinstance(flat.get("name"), str) and bool(flat.get("name")),
       "expected a non-empty string")
  positive_int("seed", 0)

  # data
  one_of("data.dataset", DATASETS)
  one_of("data.dummy_kind", DUMMY_KINDS)
  one_of("data.sampling", DATA_SAMPLING)
  positive_int("data.num_original")
  positive_int("data.num_dummy", 0)
  positive_int("data.seed", 0)
  positive_int("data.image_size", 8)
  if flat["data.dummy_kind"]:
    need("data.num_dummy", flat["data.num_dummy"] > 0,
         f"data.dummy_kind={flat['data.dummy_kind']!r} needs num_dummy > 0")
  else:
    need("data.num_dummy", flat["data.num_dummy"] == 0,
         "num_dummy > 0 needs a data.dummy_kind")
  finite("data.hybrid_cutoff", 0.0, 1.0, lo_open=True, hi_open=True)
  finite("data.original_share", 0.0, 1.0, lo_open=True, hi_open=True)
  if flat["data.dataset"] == "cifar_classes":
    classes, counts = flat["data.classes"], flat["data.class_counts"]
    need("data.class_counts", len(classes) == len(counts) and len(classes) > 0,
         f"needs one count per entry of data.classes={classes}")
    need("data.classes", all(isinstance(c, int) and 0 <= c < 10 for c in classes)
         and len(set(classes)) == len(classes),
         "expected distinct CIFAR-10 class ids in 0..9")
    need("data.class_counts", all(isinstance(c, int) and c > 0 for c in counts),
         "expected positive counts")

  # model
  num_classes = flat["model.num_classes"]
  positive_int("model.num_classes", 0)
  need("model.num_classes", num_classes != 1, "use 0 (unconditional) or >= 2")
  num_labels = _num_data_labels(flat)
  if num_classes:
    need("model.num_classes", num_classes >= num_labels,
         f"the train set has {num_labels} labels")
  one_of("model.compute_dtype", COMPUTE_DTYPES)
  positive_int("model.num_res_blocks")
  positive_int("model.model_channels")
  finite("model.dropout", 0.0, 1.0, hi_open=True)
  try:
    from mem_diffusion import models  # pylint: disable=g-import-not-at-top
    models.unet_from_config(config.model, flat["data.image_size"])
  except ImportError:
    pass
  except ValueError as e:
    raise ConfigError(str(e)) from None

  # diffusion
  positive_int("diffusion.steps", 2)
  one_of("diffusion.schedule", SCHEDULES)
  one_of("diffusion.loss", LOSSES)
  one_of("diffusion.timestep_sampler", TIMESTEP_SAMPLERS)

  # training
  positive_int("training.batch_size")
  positive_int("training.num_steps", 0)
  finite("training.learning_rate", 0.0, math.inf, lo_open=True, hi_open=True)
  finite("training.weight_decay", 0.0, math.inf, hi_open=True)
  finite("training.ema_decay", 0.0, 1.0, hi_open=True)
  positive_int("training.grad_accum_steps")
  need("training.batch_size",
       flat["training.batch_size"] % flat["training.grad_accum_steps"] == 0,
       f"must be divisible by training.grad_accum_steps="
       f"{flat['training.grad_accum_steps']}")
  positive_int("training.log_every")
  positive_int("training.checkpoint_every")
  positive_int("training.keep_checkpoints")
  positive_int("training.sample_grid_every", 0)
  if "training.grid_num_samples" in flat:
    positive_int("training.grid_num_samples")
  if "training.grid_respacing" in flat:
    need("training.grid_respacing",
         _RESPACING.match(str(flat["training.grid_respacing"])) is not None,
         "expected '', 'N', 'ddimN' or 'a,b,c'")

  # sampling
  positive_int("sampling.num_samples")
  positive_int("sampling.batch_size")
  need("sampling.respacing", _RESPACING.match(str(flat["sampling.respacing"]))
       is not None, "expected '', 'N', 'ddimN' or 'a,b,c'")
  # The spec must also fit the chain (e.g. '50' of a 20-step chain), which
  # would otherwise only fail when sampling starts, after training.
  for key in ("sampling.respacing", "training.grid_respacing"):
    if key == "training.grid_respacing" and not flat.get("training.sample_grid_every"):
      continue  # no periodic grid: the key is unused
    if flat.get(key):
      need(key, _respacing_error(flat[key], flat["diffusion.steps"]) is None,
           f"{_respacing_error(flat[key], flat['diffusion.steps'])}")
  finite("sampling.eta", 0.0, math.inf, hi_open=True)
  positive_int("sampling.seed", 0)
  positive_int("sampling.label", 0)
  if num_classes:
    need("sampling.label", flat["sampling.label"] < num_classes,
         f"must be < model.num_classes={num_classes}")

  # eval
  finite("eval.ratio_threshold", 0.0, 1.0, lo_open=True, hi_open=True)
  need("eval.blend_k", isinstance(flat["eval.blend_k"], int) and not isinstance(
      flat["eval.blend_k"], bool) and (flat["eval.blend_k"] == 0 or flat["eval.blend_k"] >= 2),
       "expected 0 (no blend test) or an integer >= 2")
  positive_int("eval.num_heldout")

  # The data package's own checks (they load nothing, but import TensorFlow,
  # so they run last, once everything cheap has passed).
  if data_checks:
    from mem_diffusion import data  # pylint: disable=g-import-not-at-top
    try:
      data.validate_data_config(config.data)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def _respacing_error(spec: Any, steps: Any) -> str | None:
  """The respacing module's complaint about `spec` for a chain of `steps`, if any."""
  from mem_diffusion.diffusion import respace  # pylint: disable=g-import-not-at-top
  try:
    respace.space_timesteps(int(steps), str(spec))
  except (ValueError, TypeError) as e:
    return str(e).splitlines()[0]
  return None


def _num_data_labels(flat: Mapping[str, Any]) -> int:
  """How many distinct labels the train set carries (as mem_diffusion.data).

  Extra cars are still cars: 'cars' dummies add no label.
  """
  if flat["data.dataset"] == "cifar_classes":
    n = len(flat["data.classes"])
  else:
    n = 1
  return n + (1 if flat["data.dummy_kind"] not in ("", "cars") else 0)


def check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks that the global batch splits over devices and micro-batches."""
  b, a = config.training.batch_size, config.training.grad_accum_steps
  if b % (num_devices * a):
    raise ConfigError(
        f"training.batch_size={b} must be divisible by the number of devices "
        f"({num_devices}) x training.grad_accum_steps ({a})")


# Keys added after workdirs existed, with the value that reproduces what a
# workdir recorded before the key (so an old run still resumes unchanged).
LEGACY_DEFAULTS = {
    "data.hybrid_mask": "corner_radius",
}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]
                   ) -> tuple[list[str], list[str]]:
  """(unsafe, safe) lists of flattened keys whose values differ.

  A key missing from `old` (a config recorded before the key existed)
  counts as its LEGACY_DEFAULTS value.
  """
  old_flat, new_flat = flatten(old), flatten(new)
  for key, value in LEGACY_DEFAULTS.items():
    old_flat.setdefault(key, value)
  changed = sorted(k for k in set(old_flat) | set(new_flat)
                   if old_flat.get(k, _MISSING) != new_flat.get(k, _MISSING))
  safe = [k for k in changed if is_safe_change(k)]
  unsafe = [k for k in changed if not is_safe_change(k)]
  return unsafe, safe


_MISSING = object()


def is_safe_change(key: str) -> bool:
  return any(key == s or (s.endswith(".") and key.startswith(s))
             for s in SAFE_TO_CHANGE)


def guard_workdir_config(saved_json: str, config: ml_collections.ConfigDict
                         ) -> list[str]:
  """Compares a workdir's config.json with the new config.

  Returns the safe keys that changed; raises ConfigError listing the unsafe
  ones (with old -> new values) when resuming would mix two experiments.
  """
  old = json.loads(saved_json)
  new = json.loads(config.to_json())
  unsafe, safe = config_changes(old, new)
  if unsafe:
    old_flat, new_flat = flatten(old), flatten(new)
    diffs = "; ".join(
        f"{k}: {old_flat.get(k, '<absent>')!r} -> {new_flat.get(k, '<absent>')!r}"
        for k in unsafe)
    raise ConfigError(
        f"the workdir holds a run with a different config ({diffs}); use a "
        "new --workdir, or revert these keys (only training.num_steps, logging/"
        "checkpoint intervals, sampling.* and eval.* may change on resume)")
  return safe
