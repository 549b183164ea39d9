"""Sweep mechanics on a micro toy config: summary files, skip/resume, figures.

The science is not tested here (tests/test_science.py is): runs are a few
steps of a tiny model, and only the bookkeeping around them is checked.
"""

import csv
import json
import os

import pytest

from mem_diffusion import sweep
from mem_diffusion import train

# 8x8 toy model, a 20-step chain and 8 training steps: seconds per run.
MICRO = ("training.num_steps=8", "diffusion.steps=20", "sampling.respacing=10",
         "sampling.num_samples=16",
         "sampling.batch_size=16", "eval.num_heldout=16", "eval.blend_k=2")
SPECS = ("configs/toy_capacity.py:8,tiny",
         "configs/toy_dummies.py:kind=gm,m=8,n=8,sampling=balanced,tiny")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sweep"))
  rows = sweep.sweep(SPECS, [0], root, MICRO, compile_cache="none")
  return root, rows


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


def test_figures_written(swept, tmp_path):
  root, rows = swept
  _assert_png(os.path.join(root, "dummies.png"))  # baseline at x = 0, then 8 GM
  assert not os.path.exists(os.path.join(root, "capacity.png"))  # one size only
  # A second train-set size (same numbers, another name) gives the capacity curve.
  bigger = dict(rows[0], name="toy_capacity_16", num_original=16)
  assert sorted(sweep.write_outputs(rows + [bigger], str(tmp_path))) == [
      str(tmp_path / "capacity.png"), str(tmp_path / "dummies.png")]
  _assert_png(str(tmp_path / "capacity.png"))


def test_rerun_skips_finished_runs(swept, monkeypatch):
  root, rows = swept

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_and_evaluate", no_training)
  again = sweep.sweep(SPECS, [0], root, MICRO, compile_cache="none")
  assert [r["replicate_ratio"] for r in again] == [r["replicate_ratio"] for r in rows]


def test_changed_step_count_resumes_and_reevaluates(swept):
  root, _ = swept
  spec = SPECS[0]
  more = tuple(o for o in MICRO if not o.startswith("training.num_steps")) + (
      "training.num_steps=10",)
  (r,) = sweep.sweep([spec], [0], root, more, compile_cache="none")
  assert r["train_step"] == 10
  with open(os.path.join(r["workdir"], "train_summary.json")) as f:
    assert json.load(f)["step"] == 10


def test_aggregate_and_series():
  def fake(name, ratio, seed, *, kind="none", m=0, n=16, sampling="uniform"):
    return {"name": name, "seed": seed, "dataset": "mondrian", "dummy_kind": kind,
            "num_dummy": m, "num_original": n, "sampling": sampling, "conditional": kind != "none",
            "replicate_ratio": ratio, "d1_median_ratio": 1.0, "frac_below_heldout_p05": 0.1,
            "frechet": 2.0, "frechet_heldout_split": 1.0, "kid": 0.1, "kid_heldout_split": 0.01}
  rows = [fake("a16", 0.9, 0), fake("a16", 0.7, 1), fake("a64", 0.2, 0, n=64),
          fake("g8u", 0.5, 0, kind="gm", m=8), fake("g32u", 0.1, 0, kind="gm", m=32),
          fake("g8b", 0.8, 0, kind="gm", m=8, sampling="balanced")]
  agg = sweep.aggregate(rows)
  a16 = agg[0]
  assert a16["ratio_mean"] == pytest.approx(0.8) and a16["ratio_std"] == pytest.approx(0.1)
  assert a16["seeds"] == [0, 1]
  cap = sweep.capacity_series(agg)
  assert [e["num_original"] for e in cap["mondrian"]] == [16, 64]
  dummies = sweep.dummy_series(agg)
  assert sorted(dummies) == ["gm, balanced", "gm, uniform"]
  # Every dummy line starts at the no-dummy run of the same train set.
  assert [e["name"] for e in dummies["gm, uniform"]] == ["a16", "g8u", "g32u"]
  assert [e["name"] for e in dummies["gm, balanced"]] == ["a16", "g8b"]


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


def test_presets_parse():
  for spec in sweep.PRESETS["toy"]:
    config = sweep.load_config(spec)
    assert config.data.image_size == 8 and config.training.ema_decay < 0.9999


def test_split_specs_keeps_config_arguments():
  assert sweep.split_specs(["configs/a.py,configs/b.py:1000,tiny", "configs/c.py:kind=gm,m=4"]) == [
      "configs/a.py", "configs/b.py:1000,tiny", "configs/c.py:kind=gm,m=4"]


def test_changed_num_samples_resamples_and_reevaluates(swept):
  root, _ = swept
  more = tuple(o for o in MICRO if not o.startswith("sampling.")) + (
      "sampling.respacing=10", "sampling.num_samples=8", "sampling.batch_size=8")
  (r,) = sweep.sweep([SPECS[0]], [0], root, more, compile_cache="none")
  assert r["num_samples"] == 8
  with open(os.path.join(r["workdir"], "eval", "report.json")) as f:
    assert json.load(f)["num_samples"] == 8
