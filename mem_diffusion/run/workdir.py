"""The workdir layout: the one place that knows where each stage's files live.

The stages talk to each other only through these files, so their paths are a
contract; spelling them out in each module let them drift apart. Keeping the
layout in one small TF- and JAX-free module also lets the stage runner, the
sweep and the tests ask "is this output there?" without importing a stage.

  config.json                      config of the run (binding once a checkpoint exists),
                                   marked as the project's, with the run's id
  checkpoints/<step>/              orbax; its meta names the run and the EMA's SHA-256
  tensorboard/                     clu metric writer
  data/train_manifest.json         which images (source, index, label)
  train_summary.json               final step, loss, params/EMA SHA-256
  train_grids/step_<N>.png         periodic EMA preview grids
  samples/samples_<N>x<H>x<W>x3.npz   improved-diffusion's format
  samples/chunks/                  finished chunks of an unfinished sampling run
  samples/grid.png
  samples/record.json              what produced the samples, with digests (records.py)
  eval/report.json, eval/*.png, eval/per_sample.npz
  eval/over_training.json, .png    replicate ratio at intervals of training (and its settings)
  eval/record.json                 what produced the report, with digests (records.py)
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Paths inside one run's workdir (absolute, so a later chdir cannot move them)."""

  root: str

  def __post_init__(self):
    object.__setattr__(self, "root", os.path.abspath(self.root))

  def _path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  # Training.
  @property
  def config_json(self) -> str:
    return self._path("config.json")

  @property
  def checkpoints(self) -> str:
    return self._path("checkpoints")

  @property
  def tensorboard(self) -> str:
    return self._path("tensorboard")

  @property
  def train_manifest(self) -> str:
    return self._path("data", "train_manifest.json")

  @property
  def train_summary(self) -> str:
    return self._path("train_summary.json")

  @property
  def train_grids(self) -> str:
    return self._path("train_grids")

  # Sampling.
  @property
  def samples_dir(self) -> str:
    return self._path("samples")

  def samples_npz(self, num_samples: int, image_size: int) -> str:
    s = image_size
    return self._path("samples", f"samples_{num_samples}x{s}x{s}x3.npz")

  @property
  def sample_chunks(self) -> str:
    return self._path("samples", "chunks")

  @property
  def samples_grid(self) -> str:
    return self._path("samples", "grid.png")

  @property
  def samples_record(self) -> str:
    return self._path("samples", "record.json")

  # Evaluation.
  @property
  def eval_dir(self) -> str:
    return self._path("eval")

  @property
  def report_json(self) -> str:
    return self._path("eval", "report.json")

  @property
  def eval_record(self) -> str:
    return self._path("eval", "record.json")

  @property
  def over_training_json(self) -> str:
    return self._path("eval", "over_training.json")

  @property
  def over_training_png(self) -> str:
    return self._path("eval", "over_training.png")

  @property
  def per_sample(self) -> str:
    return self._path("eval", "per_sample.npz")

  @property
  def nearest_neighbors_png(self) -> str:
    return self._path("eval", "nearest_neighbors.png")

  @property
  def ratio_hist_png(self) -> str:
    return self._path("eval", "ratio_hist.png")

  @property
  def distance_cdf_png(self) -> str:
    return self._path("eval", "distance_cdf.png")

  def has_checkpoints(self) -> bool:
    """Whether any step folder exists (complete or not: both bind the config)."""
    try:
      names = os.listdir(self.checkpoints)
    except (FileNotFoundError, NotADirectoryError):
      return False
    return any(n.split(".")[0].isdigit() for n in names)
