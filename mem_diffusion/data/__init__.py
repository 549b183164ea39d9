"""Train sets and the input pipeline (the only package that imports TensorFlow).

- `build_train_set(data_cfg) -> TrainSet`: original images + a fixed dummy set,
  every image reproducible from data.seed (see train_set.py for labels).
- `make_dataset(train_set, data_cfg, *, global_batch_size, seed, start_step,
  num_steps, process_index=0, process_count=1)`: the resumable input pipeline
  (NumPy batches; TensorFlow only loads CIFAR-10).
- `heldout_images(data_cfg, n)`: original-class images outside the train set.
- `validate_data_config(data_cfg)`: the data section's rules (they live in
  mem_diffusion.config); `num_classes(data_cfg)`: the labels of a train set.

The names are resolved on first use (PEP 562): importing a submodule such as
mem_diffusion.data.train_set must not load TensorFlow through this file.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BatchPlanner": "pipeline",
    "make_dataset": "pipeline",
    "TrainSet": "train_set",
    "build_train_set": "train_set",
    "heldout_available": "train_set",
    "heldout_images": "train_set",
    "write_manifest": "train_set",
    "num_classes": "train_set",
    "validate_data_config": "train_set",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))
