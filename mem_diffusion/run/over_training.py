"""Memorization watched while it happens: the replicate ratio at intervals of training.

A model can copy its training set at one point of a run and stop at another
(memorization rises as the model fits, and can fall again as EMA averages
over more steps), so the final checkpoint alone can miss the peak; the
memorization literature scores several snapshots and reports the highest.
Every `eval.every_steps` steps the training loop hands the EMA params here:
a small set (`eval.every_num_samples`, a respaced chain `eval.every_respacing`,
cheaper than the final evaluation's chain) is sampled and scored with the
same replicate test as the final report, plus the quality figure (median d1
of the samples over that of held-out real images, 1 = as far from the train
set as new real images). The points go to TensorBoard and to
`eval/over_training.json`.

Determinism and resume: each point samples with a key derived from
(sampling.seed, step) only, so a point is a function of the EMA params at
that step. A resumed run drops the points after the step it restored (they
may have been computed before a kill that lost their checkpoint), scores the
restored step if a kill took its point, and recomputes the rest bit for bit,
so a killed and resumed run writes the same curve as an uninterrupted one.

The curve is part of training's record: the file names the settings its
points depend on (records.curve_settings) and the run, and every point the
SHA-256 of the EMA params it scored. Points made under other settings, by
another run, or from other params than the kept checkpoint of their step
are dropped when training resumes, and the report leaves out a curve that
this config would not make (records.reportable_curve).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run import metrics
from mem_diffusion.run import parallel
from mem_diffusion.run import records
from mem_diffusion.analysis import replicates
from mem_diffusion import report as report_lib
from mem_diffusion.run import sampling
from mem_diffusion.run.workdir import Workdir

_KEY_TAG = 0x0E7A1  # keeps these keys apart from the final sampling run's


def enabled(config: ml_collections.ConfigDict) -> bool:
  return int(config.eval.every_steps) > 0


def sampling_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The final sampling config with the over-training sample count and chain."""
  small = ml_collections.ConfigDict(config.to_dict())
  small.sampling.num_samples = config.eval.every_num_samples
  small.sampling.batch_size = config.eval.every_num_samples
  small.sampling.respacing = config.eval.every_respacing
  small.sampling.use_ddim = False
  small.sampling.dummy_label_samples = 0  # the curve follows the original class only
  return small


def read_curve(path: str) -> list[dict[str, Any]]:
  try:
    with open(path) as f:
      return json.load(f)["points"]
  except FileNotFoundError:
    return []


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
  """The peak of the curve next to its last point, for the final report."""
  if not points:
    return {}
  peak = max(points, key=lambda p: (p["replicate_ratio"], -p["step"]))
  return {"num_points": len(points), "max_replicate_ratio": peak["replicate_ratio"],
          "max_step": peak["step"], "last_replicate_ratio": points[-1]["replicate_ratio"],
          "last_step": points[-1]["step"]}


class Watcher:
  """Scores EMA params at training steps; owns eval/over_training.json."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh,
               train_images: np.ndarray, heldout: np.ndarray | None, *, start_step: int):
    # Any eval.every_num_samples runs on any device count: the sampler pads.
    self._every = int(config.eval.every_steps)
    self._threshold = float(config.eval.ratio_threshold)
    self._seed = int(config.sampling.seed)
    self._train = train_images
    self._sampler = sampling.make_chunk_sampler(sampling_config(config), mesh)
    self._wd = Workdir(workdir)
    self._lead = jax.process_index() == 0
    self._heldout_d1 = None
    if heldout is not None and heldout.shape[0] >= 4:
      _, sq = replicates.nearest_k(heldout, train_images, 1)
      self._heldout_d1 = float(np.median(np.sqrt(sq[:, 0].astype(np.float64))))
    self._chain = config.eval.every_respacing or "full chain"
    self._settings = records.curve_settings(config)
    self._run_id = records.run_id(self._wd)
    self.points = self._reusable_points(config, start_step)

  def _reusable_points(self, config: ml_collections.ConfigDict, start_step: int
                       ) -> list[dict[str, Any]]:
    """The stored points this run would make again; says once why others go."""
    try:
      curve = records.read_json(self.path)
    except errors.WorkdirError:
      curve = "damaged"
    if curve is None:
      return []
    why = records.curve_changes(curve, config, self._run_id)
    if why is None:
      # Points after the restored step belong to a trajectory being redone;
      # one whose kept checkpoint holds other params was not this run's.
      points = [p for p in curve["points"] if p["step"] <= start_step]
      if all(self._params_match(p) for p in points):
        return points
      why = "made from other params than the checkpoints of its steps"
    if self._lead:
      print(f"over training: {os.path.relpath(self.path, self._wd.root)} was {why}; "
            "its points are dropped", flush=True)
    return []

  def _params_match(self, point: dict[str, Any]) -> bool:
    kept = records.checkpoint_meta(self._wd, point["step"]).get("ema_sha256")
    return kept is None or kept == point.get("ema_sha256")

  @property
  def path(self) -> str:
    return self._wd.over_training_json

  @property
  def figure_path(self) -> str:
    return self._wd.over_training_png

  def due(self, step: int) -> bool:
    return step % self._every == 0 and not any(p["step"] == step for p in self.points)

  def __call__(self, step: int, ema_params: Any, writer=None) -> dict[str, Any]:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self._seed), _KEY_TAG), step)
    samples = np.asarray(parallel.fetch(self._sampler(ema_params, key)))
    ema_sha256 = metrics.tree_sha256(parallel.fetch(ema_params))
    report, per_sample = replicates.analyze(samples, self._train, threshold=self._threshold,
                                            blend_k=0)
    median_d1 = float(np.median(per_sample["d1"]))
    point = {"step": int(step), "replicate_ratio": report["replicate_ratio"],
             "replicate_ci95": report["replicate_ci95"],
             "num_samples": int(samples.shape[0]),
             "median_d1_ratio": (median_d1 / max(self._heldout_d1, 1e-12)
                                 if self._heldout_d1 is not None else None),
             "ema_sha256": ema_sha256}
    self.points = [p for p in self.points if p["step"] != step] + [point]
    self.points.sort(key=lambda p: p["step"])
    if writer is not None:
      scalars = {"over_training/replicate_ratio": point["replicate_ratio"]}
      if point["median_d1_ratio"] is not None:
        scalars["over_training/median_d1_ratio"] = point["median_d1_ratio"]
      writer.write_scalars(step, scalars)
    self._write()
    return point

  def _write(self) -> None:
    if not self._lead:
      return
    os.makedirs(self._wd.eval_dir, exist_ok=True)
    files.write_json(self.path, {"chain": self._chain, "settings": self._settings,
                                 "run_id": self._run_id, "points": self.points,
                                 "summary": summarize(self.points)})
    steps = [p["step"] for p in self.points]
    series = {"replicate ratio": [p["replicate_ratio"] for p in self.points]}
    if all(p["median_d1_ratio"] is not None for p in self.points):
      series["median d1 / held-out"] = [p["median_d1_ratio"] for p in self.points]
    if len(steps) >= 2:
      report_lib.line_plot(steps, series, self.figure_path, xlabel="training step",
                           title=f"memorization over training ({self.points[-1]['num_samples']} "
                                 f"samples per point, chain '{self._chain}')")
