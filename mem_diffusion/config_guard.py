"""The workdir guard: resuming a run must not mix two experiments.

A workdir's config.json records what trained it; a resumed run may change
only the keys that do not change what training computes up to the resumed
step. Kept apart from mem_diffusion/config.py (loading and validation) since
it compares two configs instead of checking one.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ml_collections import ConfigDict

from mem_diffusion.config import flatten
from mem_diffusion.errors import ConfigError

# The workdir guard: resuming must not mix two experiments. These keys may change
# without changing what training computes up to the resumed step ('x.' = section).
SAFE_TO_CHANGE = (
    "name", "training.num_steps", "training.log_every", "training.checkpoint_every",
    "training.keep_checkpoints", "training.sample_grid_every", "training.grid_num_samples",
    "training.grid_respacing", "data.tfds_data_dir", "data.download", "sampling.", "eval.",
)

# Keys added after workdirs existed: the value that reproduces an older workdir's run.
LEGACY_DEFAULTS = {"data.hybrid_mask": "corner_radius", "data.random_labels": 0,
                   "training.loss_scale": 1.0}


def is_safe_change(key: str) -> bool:
  return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_TO_CHANGE)


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list, list]:
  """(unsafe, safe) flattened keys whose values differ; a key missing from
  `old` (recorded before it existed) counts as its LEGACY_DEFAULTS value."""
  old_flat, new_flat = flatten(old), flatten(new)
  for key, value in LEGACY_DEFAULTS.items():
    old_flat.setdefault(key, value)
  changed = sorted(k for k in set(old_flat) | set(new_flat)
                   if k not in old_flat or k not in new_flat or old_flat[k] != new_flat[k])
  return ([k for k in changed if not is_safe_change(k)],
          [k for k in changed if is_safe_change(k)])


def guard_workdir_config(saved_json: str, config: ConfigDict) -> list[str]:
  """The safe keys changed since the workdir's config.json; raises ConfigError
  listing the unsafe ones (old -> new) when resuming would mix two experiments."""
  old, new = json.loads(saved_json), json.loads(config.to_json())
  unsafe, safe = config_changes(old, new)
  if unsafe:
    old_flat, new_flat = flatten(old), flatten(new)
    diffs = "; ".join(f"{k}: {old_flat.get(k, '<absent>')!r} -> "
                      f"{new_flat.get(k, '<absent>')!r}" for k in unsafe)
    raise ConfigError(f"the workdir holds a run with a different config ({diffs}); use a new "
                      "--workdir, or revert these keys (only training.num_steps, logging/"
                      "checkpoint intervals, sampling.* and eval.* may change on resume)")
  return safe
