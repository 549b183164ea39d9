"""The stage runner: complete stages skipped, stale ones redone, wrong ones refused.

One micro toy run (8 training steps, 16 samples) is made once; each test
works on a copy of its workdir, so the cases stay independent. Each case is
a way a result used to come out stale or silently wrong with exit 0.
"""

import json
import os
import shutil

import pytest

from mem_diffusion import errors
from mem_diffusion.run import evaluate
from mem_diffusion.run import sampling
from mem_diffusion.run import stages
from mem_diffusion.experiments import sweep
from mem_diffusion.run import train
from mem_diffusion.run.workdir import Workdir

MICRO = ("training.num_steps=8", "diffusion.steps=20", "sampling.respacing=10",
         "sampling.num_samples=16", "sampling.batch_size=16", "eval.num_heldout=16",
         "eval.blend_k=2")


def _config(*overrides):
  config = sweep.load_config("configs/toy_capacity.py:8,tiny")
  for o in MICRO + overrides:
    sweep.apply_override(config, o)
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("stages") / "run")
  report = stages.run(_config(), root)
  return root, report


@pytest.fixture
def workdir(finished, tmp_path):
  path = str(tmp_path / "copy")
  shutil.copytree(finished[0], path, ignore=shutil.ignore_patterns(".lock"))
  return path


def _forbid(monkeypatch, module, name):
  def refuse(*args, **kwargs):
    raise AssertionError(f"{module.__name__}.{name} ran although its outputs were up to date")
  monkeypatch.setattr(module, name, refuse)


def test_finished_run_has_records_and_report(finished):
  root, report = finished
  wd = Workdir(root)
  assert report["num_samples"] == 16 and report["train_step"] == 8
  for path in (wd.samples_record, wd.eval_record, wd.report_json, wd.config_json):
    assert os.path.exists(path), path


def test_rerun_skips_every_stage(workdir, monkeypatch, capsys):
  for module, name in ((train, "train_and_evaluate"), (sampling, "sample_to_workdir"),
                       (evaluate, "evaluate_workdir")):
    _forbid(monkeypatch, module, name)
  report = stages.run(_config(), workdir)
  assert report["num_samples"] == 16
  assert capsys.readouterr().out.count("(skipped)") == 3


def test_the_config_is_validated_once_per_run(workdir, monkeypatch):
  calls = []
  validate = stages.config_lib.validate_config
  monkeypatch.setattr(stages.config_lib, "validate_config",
                      lambda config, **kw: calls.append(1) or validate(config, **kw))
  stages.run(_config(), workdir)
  assert len(calls) == 1


def test_changed_num_samples_redoes_samples_and_report(workdir, monkeypatch, capsys):
  _forbid(monkeypatch, train, "train_and_evaluate")
  report = stages.run(_config("sampling.num_samples=32", "sampling.batch_size=32"), workdir)
  assert report["num_samples"] == 32
  out = capsys.readouterr().out
  assert "samples: made with other settings" in out and "sampling.num_samples: 16 -> 32" in out
  with open(Workdir(workdir).report_json) as f:
    assert json.load(f)["num_samples"] == 32
  # Only the new samples file remains: nothing stale lies beside the new one.
  assert sorted(os.listdir(Workdir(workdir).samples_dir)) == [
      "grid.png", "record.json", "samples_32x8x8x3.npz"]


def test_more_training_steps_resample_and_reevaluate(workdir):
  report = stages.run(_config("training.num_steps=10"), workdir)
  assert report["train_step"] == 10


def test_changed_eval_key_reevaluates_without_resampling(workdir, monkeypatch, capsys):
  _forbid(monkeypatch, sampling, "sample_to_workdir")
  report = stages.run(_config("eval.blend_k=0"), workdir)
  assert report["blend_k"] == 0
  assert "eval: made with other settings" in capsys.readouterr().out


@pytest.mark.parametrize("stage,override", [
    ("eval", "data.seed=7"),                 # another train set
    ("sample", "diffusion.schedule=linear"),  # another chain than trained with
    ("train", "model.dropout=0.3"),
])
def test_a_config_that_changes_what_was_trained_is_refused(workdir, stage, override):
  with pytest.raises(errors.ConfigError, match=override.split("=")[0]):
    stages.run(_config(override), workdir, (stage,))


@pytest.mark.parametrize("stage", stages.STAGES)
def test_checkpoints_without_a_config_record_are_refused(workdir, stage):
  os.remove(Workdir(workdir).config_json)
  with pytest.raises(errors.WorkdirError, match="no config.json"):
    stages.run(_config(), workdir, (stage,))


def _record_xla_flags(workdir, value):
  with open(Workdir(workdir).config_json) as f:
    record = json.load(f)
  record["environment"]["xla_flags"] = value
  with open(Workdir(workdir).config_json, "w") as f:
    json.dump(record, f)


def test_resuming_under_other_xla_flags_is_refused_unless_accepted(workdir, monkeypatch,
                                                                   capsys):
  """The checkpoints were trained under the recorded XLA_FLAGS; training on
  under others mixes two numerics. Sampling and evaluating are not refused."""
  monkeypatch.delenv("MEM_DIFFUSION_ACCEPT_ENVIRONMENT", raising=False)
  _record_xla_flags(workdir, "--xla_cpu_enable_fast_math=true")
  more = _config("training.num_steps=10")
  with pytest.raises(errors.ConfigError, match="xla_flags: '--xla_cpu_enable_fast_math=true'") as e:
    stages.run(more, workdir, ("train",))
  assert "\n" not in str(e.value)
  stages.run(_config(), workdir, ("train", "sample"))  # complete training is not resumed
  report = stages.run(more, workdir, ("train",), accept_environment=True)
  assert "note: resuming under another environment (accepted): xla_flags" in capsys.readouterr().out
  with open(Workdir(workdir).config_json) as f:  # the record is the new session's
    assert json.load(f)["environment"]["xla_flags"] == os.environ.get("XLA_FLAGS", "")
  assert report is None and stages.is_complete(more, workdir, "train")


def test_unreadable_config_record_is_one_line(workdir):
  with open(Workdir(workdir).config_json, "w") as f:
    f.write('{"truncated": ')
  with pytest.raises(errors.WorkdirError, match="unreadable"):
    stages.run(_config(), workdir, ("eval",))


def test_a_record_without_checkpoints_does_not_bind(tmp_path, finished):
  """A start that failed before its first checkpoint never locks the workdir."""
  wd = Workdir(str(tmp_path / "w"))
  os.makedirs(wd.root)
  shutil.copy(Workdir(finished[0]).config_json, wd.config_json)
  with open(wd.config_json) as f:
    record = json.load(f)
  record["model"]["dropout"] = 0.5
  with open(wd.config_json, "w") as f:
    json.dump(record, f)
  stages.check_config_record(_config(), wd)  # no ConfigError


def test_missing_inputs_name_the_stage_to_run(tmp_path):
  with pytest.raises(errors.WorkdirError, match="train first"):
    stages.run(_config(), str(tmp_path / "empty"), ("sample",))
  with pytest.raises(errors.WorkdirError, match="run --mode=sample"):
    stages.run(_config(), str(tmp_path / "empty"), ("eval",))


def test_workdir_that_is_or_lies_under_a_file(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  for path in (afile, afile / "below"):
    with pytest.raises(errors.WorkdirError, match="is a file"):
      stages.run(_config(), str(path), ("eval",))


def test_unknown_stage():
  with pytest.raises(errors.ConfigError, match="unknown stage"):
    stages.run(_config(), "unused", ("fit",))


def test_summary_block_names_ratio_interval_and_paths(finished):
  root, report = finished
  lines = stages.summary_lines(report, Workdir(root))
  text = "\n".join(lines)
  assert lines[0].startswith("== result:") and "replicate ratio" in text
  assert "95% CI" in text and "report.json" in text and "nearest_neighbors.png" in text
  assert "nan" not in text
