"""Sweep mechanics on a micro toy config: summary files, skip/resume, figures.

The science is not tested here (tests/test_science.py is): runs are a few
steps of a tiny model, and only the bookkeeping around them is checked.
"""

import csv
import json
import os
import signal
import sys
import threading
import time

import pytest

from mem_diffusion import errors
from mem_diffusion.experiments import sweep
from mem_diffusion.experiments import workers
from mem_diffusion.run import train

# 8x8 toy model, a 20-step chain and 8 training steps: seconds per run.
# The toy dummy configs add dummy-label samples on top of their own count;
# here every run draws 16 of the original class only.
MICRO = ("training.num_steps=8", "diffusion.steps=20", "sampling.respacing=10",
         "sampling.num_samples=16", "sampling.dummy_label_samples=0",
         "sampling.batch_size=16", "eval.num_heldout=16", "eval.blend_k=2")
SPECS = ("configs/toy_capacity.py:8,tiny",
         "configs/toy_dummies.py:kind=gm,m=8,n=8,sampling=balanced,tiny")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sweep"))
  rows = sweep.sweep(SPECS, [0], root, MICRO, compile_cache="none")
  return root, rows


@pytest.mark.slow
def test_summary_files(swept):
  root, rows = swept
  assert [r["name"] for r in rows] == ["toy_capacity_8", "toy_gm_8_balanced_n8"]
  with open(os.path.join(root, "summary.csv")) as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == sweep.COLUMNS
    table = list(reader)
  assert len(table) == 2
  for r in table:
    assert 0.0 <= float(r["replicate_ratio"]) <= 1.0
    assert int(r["train_step"]) == 8 and int(r["num_samples"]) == 16
    assert float(r["d1_median_ratio"]) > 0  # the quality figure is next to the ratio
    assert os.path.exists(os.path.join(r["workdir"], "eval", "nearest_neighbors.png"))
  gm = table[1]
  assert (gm["dummy_kind"], gm["num_dummy"], gm["sampling"], gm["conditional"]) == (
      "gm", "8", "balanced", "True")
  assert table[0]["dummy_kind"] == "none" and table[0]["num_dummy"] == "0"
  with open(os.path.join(root, "summary.json")) as f:
    agg = json.load(f)["aggregate"]
  assert [e["name"] for e in agg] == [r["name"] for r in rows]
  with open(os.path.join(root, "summary.md")) as f:
    md = f.read()
  assert md.count("\n| toy_") == 2


def _assert_png(path):
  assert os.path.getsize(path) > 5000, path
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_figures_written(swept, tmp_path):
  root, rows = swept
  # GM with balanced batches: the dummies-fill figure, from the no-dummy run at x = 0.
  _assert_png(os.path.join(root, "dummies_fill.png"))
  assert not os.path.exists(os.path.join(root, "capacity.png"))  # one size only
  # A second train-set size (same numbers, another name) gives the capacity curve.
  bigger = dict(rows[0], name="toy_capacity_16", num_original=16)
  assert sorted(sweep.write_outputs(rows + [bigger], str(tmp_path))) == [
      str(tmp_path / "capacity.png"), str(tmp_path / "dummies_fill.png")]
  _assert_png(str(tmp_path / "capacity.png"))


@pytest.mark.slow
def test_rerun_skips_finished_runs(swept, monkeypatch):
  root, rows = swept

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_and_evaluate", no_training)
  again = sweep.sweep(SPECS, [0], root, MICRO, compile_cache="none")
  assert [r["replicate_ratio"] for r in again] == [r["replicate_ratio"] for r in rows]


@pytest.mark.slow
def test_changed_step_count_resumes_and_reevaluates(swept):
  root, _ = swept
  spec = SPECS[0]
  more = tuple(o for o in MICRO if not o.startswith("training.num_steps")) + (
      "training.num_steps=10",)
  (r,) = sweep.sweep([spec], [0], root, more, compile_cache="none")
  assert r["train_step"] == 10
  with open(os.path.join(r["workdir"], "train_summary.json")) as f:
    assert json.load(f)["step"] == 10


def test_override_errors_name_the_key():
  config = sweep.load_config("configs/toy_capacity.py:16")
  sweep.apply_override(config, "training.num_steps=7")
  sweep.apply_override(config, "model.channel_mult=1,2,2")
  sweep.apply_override(config, "data.hflip=true")
  assert config.training.num_steps == 7 and config.model.channel_mult == (1, 2, 2)
  assert config.data.hflip is True
  with pytest.raises(ValueError, match="training.num_stepz"):
    sweep.apply_override(config, "training.num_stepz=7")
  with pytest.raises(ValueError, match="training.num_steps"):
    sweep.apply_override(config, "training.num_steps=many")
  with pytest.raises(ValueError, match="key=value"):
    sweep.apply_override(config, "training.num_steps")


def test_plan_rejects_bad_configs_before_running(tmp_path):
  with pytest.raises(ValueError, match="sampling='sometimes'"):
    sweep.plan_runs(["configs/toy_dummies.py:sampling=sometimes"], [0], str(tmp_path))
  with pytest.raises(ValueError, match="same name"):
    sweep.plan_runs(["configs/toy_capacity.py:16", "configs/toy_capacity.py:n=16"], [0],
                    str(tmp_path))
  assert not os.listdir(tmp_path)


def test_toy_preset_plans_and_validates(tmp_path):
  """Needs the data branch (kind=hybrid, batch=, _s<steps> names, minority/majority)."""
  preset = sweep.PRESETS["toy"]
  plan = sweep.plan_runs(preset.specs, [0, 1, 2], str(tmp_path), preset.overrides,
                         preset.seeds_by_spec([0, 1, 2]))
  assert len(plan) == 3 * len(preset.specs) + 2 * len(preset.close)
  seeds = {}
  for spec, seed, _, _ in plan:
    seeds.setdefault(spec, []).append(seed)
  assert all(seeds[s] == ([0, 1, 2, 3, 4] if s in preset.close else [0, 1, 2]) for s in seeds)
  assert len({workdir for *_, workdir in plan}) == len(plan)  # no two runs share a workdir
  for _, _, config, _ in plan:
    assert config.data.image_size == 8 and config.training.ema_decay < 0.9999
    assert config.eval.every_steps == 0  # the preset's override
  steps = {c.name: (c.training.num_steps, c.training.batch_size) for _, _, c, _ in plan}
  assert sorted(set(steps.values())) == [(1000, 16), (2000, 16), (2000, 32)]
  assert not os.listdir(tmp_path)


def test_split_specs_keeps_config_arguments():
  assert sweep.split_specs(["configs/a.py,configs/b.py:1000,tiny", "configs/c.py:kind=gm,m=4"]) == [
      "configs/a.py", "configs/b.py:1000,tiny", "configs/c.py:kind=gm,m=4"]


@pytest.mark.slow
def test_changed_num_samples_resamples_and_reevaluates(swept):
  root, _ = swept
  # At 10 steps: the step-count test may have trained this workdir to 10, and a
  # config asking for fewer steps than the checkpoints hold is refused.
  more = tuple(o for o in MICRO if not o.startswith(("sampling.", "training.num_steps"))) + (
      "training.num_steps=10", "sampling.respacing=10", "sampling.num_samples=8",
      "sampling.batch_size=8")
  (r,) = sweep.sweep([SPECS[0]], [0], root, more, compile_cache="none")
  assert r["num_samples"] == 8
  with open(os.path.join(r["workdir"], "eval", "report.json")) as f:
    assert json.load(f)["num_samples"] == 8


@pytest.mark.slow
def test_parallel_jobs_run_in_workers_and_resume(tmp_path, monkeypatch):
  """--jobs=2: one pinned subprocess per run; a rerun starts no worker at all."""
  root = str(tmp_path)
  specs = ["configs/toy_capacity.py:n=4,tiny", "configs/toy_capacity.py:n=6,tiny"]
  rows = sweep.sweep(specs, [0], root, MICRO, jobs=2, compile_cache="none")
  assert [r["name"] for r in rows] == ["toy_capacity_4", "toy_capacity_6"]
  with open(os.path.join(root, "summary.csv")) as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == ["toy_capacity_4", "toy_capacity_6"]
  assert all(int(r["train_step"]) == 8 and int(r["num_samples"]) == 16 for r in table)
  for r in table:  # each worker's output went to its run's log
    with open(os.path.join(r["workdir"], "sweep.log")) as f:
      assert "== result:" in f.read()

  def no_worker(*args, **kwargs):
    raise AssertionError("a finished run started a worker")

  monkeypatch.setattr(workers, "worker_command", no_worker)
  again = sweep.sweep(specs, [0], root, MICRO, jobs=2, compile_cache="none")
  assert [r["replicate_ratio"] for r in again] == [r["replicate_ratio"] for r in rows]


def _fake_workers(monkeypatch, script):
  """Workers that run `script` instead of a training run (the parent's bookkeeping only)."""
  monkeypatch.setattr(workers, "worker_command", lambda *a, **k: [sys.executable, "-c", script])


def test_parallel_failures_are_reported_after_the_others(tmp_path, monkeypatch, capsys):
  _fake_workers(monkeypatch, "print('worker says: disk on fire'); raise SystemExit(3)")
  specs = ["configs/toy_capacity.py:n=4,tiny", "configs/toy_capacity.py:n=6,tiny",
           "configs/toy_capacity.py:n=8,tiny"]
  (tmp_path / "toy_capacity_8").write_text("a file where the run's folder goes")
  with pytest.raises(errors.RunFailedError, match="3 of 3 runs failed: toy_capacity_4 seed 0, "
                     "toy_capacity_6 seed 0, toy_capacity_8 seed 0"):
    sweep.sweep(specs, [0], str(tmp_path), MICRO, jobs=2, compile_cache="none")
  err = capsys.readouterr().err
  assert err.count("worker says: disk on fire") == 2  # each failed run's log tail
  assert "toy_capacity_6 seed 0: FAILED (exit 3)" in err
  assert "toy_capacity_8 seed 0: FAILED to start" in err


def test_parallel_sigterm_stops_the_workers(tmp_path, monkeypatch):
  # The worker acknowledges SIGTERM in its log, as train.py saves then exits 143.
  _fake_workers(monkeypatch, "import signal, sys, time\n"
                "def stop(*_):\n  print('worker: saved', flush=True); sys.exit(143)\n"
                "signal.signal(signal.SIGTERM, stop)\nprint('worker: up', flush=True)\n"
                "time.sleep(60)")
  log = tmp_path / "toy_capacity_4" / "seed0" / "sweep.log"

  def stop_when_up():  # Ctrl-C / SIGTERM to the sweep once its worker runs
    for _ in range(600):
      if log.exists() and "worker: up" in log.read_text():
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.1)

  watcher = threading.Thread(target=stop_when_up, daemon=True)
  watcher.start()
  with pytest.raises(errors.Preempted, match="toy_capacity_4 seed 0") as e:
    sweep.sweep(["configs/toy_capacity.py:n=4,tiny"], [0], str(tmp_path), MICRO, jobs=2,
                compile_cache="none")
  watcher.join()
  assert e.value.exit_code == 128 + signal.SIGTERM
  assert log.read_text().splitlines()[-1] == "worker: saved"
