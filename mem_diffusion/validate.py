"""Config validation before any compute, and the workdir config guard.

Every bad value raises ConfigError (a ValueError) whose one-line message names
the key, so main.py can print it and exit 2 instead of failing minutes later
inside a jitted function. This module holds only what spans the config:

- the schema check: every key of configs/default.py present, no other key,
  each of its default's type (a missing or broken schema is an error);
- each component's own rules, which live with the component: data/config_rules.py,
  models/config_rules.py, diffusion/config_rules.py, stage_rules.py
  (training, sampling, eval); docs/reliability.md lists the limits;
- the rules that compare sections (labels vs model.num_classes, respacing vs
  diffusion.steps, eval sizes vs the train set);
- the guard that refuses to resume a workdir with a different config.

Validation reads the config only (no TensorFlow, no data, no compile), so
calling it again on the same config is cheap and gives the same answer.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import ml_collections

from mem_diffusion import config_checks, config_loading, stage_rules
from mem_diffusion.config_checks import require
from mem_diffusion.config_loading import flatten  # re-exported for callers
from mem_diffusion.data import config_rules as data_rules
from mem_diffusion.diffusion import config_rules as diffusion_rules
from mem_diffusion.errors import ConfigError  # re-exported for callers
from mem_diffusion.models import config_rules as model_rules

__all__ = ["ConfigError", "SAFE_TO_CHANGE", "all_limits", "check_devices", "config_changes", "flatten",
           "guard_workdir_config", "is_safe_change", "validate_config"]

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

TOP_LEVEL_LIMITS = (
    config_checks.int_in("seed", 0, config_checks.MAX_SEED, config_checks.SEED_WHY),
)


def all_limits() -> tuple[config_checks.Limit, ...]:
  """Every per-key limit of every section (docs/reliability.md lists them)."""
  return (TOP_LEVEL_LIMITS + data_rules.LIMITS + model_rules.LIMITS + diffusion_rules.LIMITS
          + stage_rules.TRAINING_LIMITS + stage_rules.SAMPLING_LIMITS
          + stage_rules.EVAL_LIMITS)


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


def check_schema(config: ml_collections.ConfigDict) -> None:
  """Same keys as configs/default.py, each of its default's type."""
  flat, schema = flatten(config), config_loading.schema()
  unknown = sorted(set(flat) - set(schema))
  require(not unknown, f"unknown config key(s): {', '.join(unknown)}")
  missing = sorted(set(schema) - set(flat))
  require(not missing, f"missing config key(s): {', '.join(missing)}")
  for k, ref in schema.items():
    require(_type_ok(flat[k], ref), f"{k}={flat[k]!r} has type {type(flat[k]).__name__}, "
            f"expected {type(ref).__name__}")


def validate_config(config: ml_collections.ConfigDict, *,
                    data_checks: bool = True) -> None:
  """Raises ConfigError naming the first bad key; returns None when runnable.

  `data_checks` is accepted for older callers and ignored: the data rules no
  longer import TensorFlow, so they always run.
  """
  del data_checks
  check_schema(config)
  require(bool(config.name), "name='': expected a non-empty string (it names the run)")
  config_checks.check_section(TOP_LEVEL_LIMITS, config)

  # Each component's own section.
  data_rules.validate_data_config(config.data)
  model_rules.validate_model_config(config.model, config.data.image_size)
  diffusion_rules.validate_diffusion_config(config.diffusion)
  stage_rules.validate_training_config(config.training)
  stage_rules.validate_sampling_config(config.sampling, config.model.num_classes)
  stage_rules.validate_eval_config(config.eval)

  _check_across_sections(config)


def _check_across_sections(config: ml_collections.ConfigDict) -> None:
  num_classes = config.model.num_classes
  num_labels = data_rules.num_classes(config.data)
  if num_classes:
    require(num_classes >= num_labels, f"model.num_classes={num_classes}: the train set "
            f"has {num_labels} labels")
    require(config.sampling.label < num_classes, f"sampling.label={config.sampling.label}: "
            f"must be < model.num_classes={num_classes}")

  steps = config.diffusion.steps
  diffusion_rules.check_respacing("sampling.respacing", config.sampling.respacing, steps)
  # Without a periodic grid the grid chain is never built: check only its spelling.
  diffusion_rules.check_respacing("training.grid_respacing", config.training.grid_respacing,
                                  steps if config.training.sample_grid_every else None)
  diffusion_rules.check_respacing("eval.every_respacing", config.eval.every_respacing,
                                  steps if config.eval.every_steps else None)


def check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks that the global batch splits over devices and micro-batches."""
  b, a = config.training.batch_size, config.training.micro_batches
  require(b % (num_devices * a) == 0,
          f"training.batch_size={b} must be divisible by the number of devices "
          f"({num_devices}) x training.micro_batches ({a})")


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
