"""Train sets and the input pipeline (the only package that imports TensorFlow).

- `build_train_set(data_cfg) -> TrainSet`: original images + a fixed dummy set,
  every image reproducible from data.seed (see train_set.py for labels).
- `make_dataset(train_set, data_cfg, *, global_batch_size, seed, start_step,
  num_steps, process_index=0, process_count=1)`: the resumable tf.data pipeline.
- `heldout_images(data_cfg, n)`: original-class images outside the train set.
"""

from mem_diffusion.data.pipeline import BatchPlanner, make_dataset
from mem_diffusion.data.train_set import (
    TrainSet,
    build_train_set,
    heldout_available,
    heldout_images,
    num_classes,
    validate_data_config,
    write_manifest,
)

__all__ = [
    "BatchPlanner",
    "TrainSet",
    "build_train_set",
    "heldout_available",
    "heldout_images",
    "make_dataset",
    "num_classes",
    "validate_data_config",
    "write_manifest",
]
