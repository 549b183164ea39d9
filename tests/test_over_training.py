"""Memorization over training: the curve is written, and a killed run redraws it exactly."""

import json
import os
import shutil

import pytest

from mem_diffusion.run import over_training
from mem_diffusion.run import stages
from mem_diffusion.run.workdir import Workdir
import train_helpers as th


def _config(num_steps):
  return th.micro_config(training__num_steps=num_steps, eval__every_steps=4,
                         eval__every_num_samples=8, eval__every_respacing="5")


def _curve(workdir):
  with open(Workdir(workdir).over_training_json) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  stages.run(_config(16), workdir, ("train",))
  return workdir


@pytest.mark.slow
def test_curve_has_a_point_every_interval(uninterrupted):
  curve = _curve(uninterrupted)
  assert [p["step"] for p in curve["points"]] == [4, 8, 12, 16]
  for p in curve["points"]:
    assert 0.0 <= p["replicate_ratio"] <= 1.0 and p["num_samples"] == 8
    assert p["median_d1_ratio"] is not None and p["median_d1_ratio"] > 0
  assert curve["summary"]["num_points"] == 4 and curve["summary"]["last_step"] == 16
  assert os.path.getsize(Workdir(uninterrupted).over_training_png) > 5000


@pytest.mark.slow
def test_killed_and_resumed_run_writes_the_same_curve(uninterrupted, tmp_path):
  workdir = str(tmp_path / "killed")
  wd = Workdir(workdir)
  stages.run(_config(12), workdir, ("train",))
  # What a SIGKILL after the step-12 point but before its checkpoint leaves:
  # the point is on disk, the checkpoint is not. Poison the point, so that
  # keeping it instead of recomputing it would show.
  shutil.rmtree(os.path.join(wd.checkpoints, "12"))
  os.remove(wd.train_summary)
  curve = _curve(workdir)
  curve["points"][-1]["replicate_ratio"] = -1.0
  with open(wd.over_training_json, "w") as f:
    json.dump(curve, f)
  stages.run(_config(16), workdir, ("train",))
  assert _curve(workdir)["points"] == _curve(uninterrupted)["points"]


def test_summary_takes_the_peak_and_the_last_point():
  points = [{"step": 4, "replicate_ratio": 0.2}, {"step": 8, "replicate_ratio": 0.9},
            {"step": 12, "replicate_ratio": 0.9}, {"step": 16, "replicate_ratio": 0.5}]
  assert over_training.summarize(points) == {
      "num_points": 4, "max_replicate_ratio": 0.9, "max_step": 8,
      "last_replicate_ratio": 0.5, "last_step": 16}
  assert over_training.summarize([]) == {}
