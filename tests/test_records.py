"""Records: an output is reused only while what made it is unchanged.

Each case is a way a run used to end with exit 0 and a stale or wrong
answer. One micro toy run (8 training steps with an over-training point
every 4, 16 samples) is made once, and a second run of another seed; each
test works on a copy, so the cases stay independent. Where the command line
is the point (a refusal's one line, the `--allow_unfinished` flag, a kill),
the case runs main.py in a subprocess.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from mem_diffusion import config as config_lib
from mem_diffusion import errors
from mem_diffusion.run import sampling
from mem_diffusion.run import stages
from mem_diffusion.run.workdir import Workdir
import train_helpers as th

CONFIG = "configs/toy_capacity.py:8,tiny"
MICRO = ("training.num_steps=8", "training.checkpoint_every=4", "training.keep_checkpoints=10",
         "diffusion.steps=20", "sampling.respacing=10", "sampling.num_samples=16",
         "sampling.batch_size=16", "eval.num_heldout=16", "eval.blend_k=2",
         "eval.every_steps=4", "eval.every_num_samples=8", "eval.every_respacing=5")
NPZ = "samples_16x8x8x3.npz"


def _config(*overrides):
  config = config_lib.load_config(CONFIG)
  for o in MICRO + overrides:
    config_lib.apply_override(config, o)
  return config


def _flags(*overrides):
  return [f"--config={CONFIG}"] + [f"--config.{o}" for o in MICRO + overrides]


def _main(args, env=None, timeout=600):
  return subprocess.run([sys.executable, os.path.join(th.REPO, "main.py")] + list(args),
                        cwd=th.REPO, env=env or th.subprocess_env(1),
                        capture_output=True, text=True, timeout=timeout)


def _one_error_line(r, *needles):
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2, r.stdout + r.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def _read(path):
  with open(path) as f:
    return json.load(f)


def _bytes(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records") / "run")
  return root, stages.run(_config(), root)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
  """Another run of the same experiment (another seed), trained and sampled."""
  root = str(tmp_path_factory.mktemp("records") / "other")
  stages.run(_config("seed=1", "eval.every_steps=0"), root, ("train", "sample"))
  return root


@pytest.fixture
def workdir(finished, tmp_path):
  path = str(tmp_path / "copy")
  shutil.copytree(finished[0], path, ignore=shutil.ignore_patterns(".lock"))
  return path


@pytest.mark.slow
def test_records_name_what_they_were_made_from(finished):
  root, report = finished
  wd = Workdir(root)
  summary = _read(wd.train_summary)
  samples = _read(wd.samples_record)
  source = samples["fingerprint"]["source"]
  assert source["checkpoint_step"] == 8 and source["ema_sha256"] == summary["ema_sha256"]
  npz = os.path.join(wd.samples_dir, NPZ)
  assert samples["output"] == {"file": f"samples/{NPZ}", "bytes": os.path.getsize(npz),
                               "sha256": stages.records.file_digest(npz)["sha256"]}
  evaluated = _read(wd.eval_record)["fingerprint"]
  assert evaluated["samples_file"] == {k: samples["output"][k] for k in ("bytes", "sha256")}
  assert evaluated["train_manifest_sha256"] and evaluated["eval"]["blend_k"] == 2
  curve = _read(wd.over_training_json)
  assert curve["settings"]["eval.every_num_samples"] == 8
  assert curve["points"][-1]["ema_sha256"] == summary["ema_sha256"]
  assert report["train_step"] == 8 and report["train_num_steps"] == 8
  assert report["over_training"]["num_points"] == 2


@pytest.mark.slow
def test_fewer_steps_than_trained_is_refused_in_one_line(workdir):
  """A config asking for 4 steps must not get the 8-step model's answer."""
  r = _main(_flags("training.num_steps=4") + [f"--workdir={workdir}", "--mode=train"])
  _one_error_line(r, "training.num_steps=4", "step 8")
  assert "already complete" not in r.stdout
  for stage in ("sample", "eval"):
    with pytest.raises(errors.ConfigError, match="reached step 8"):
      stages.run(_config("training.num_steps=4"), workdir, (stage,))


KILL_AT_POINT = r"""
import os, runpy, signal, sys, time
from mem_diffusion.run import over_training

kill_step = int(os.environ["KILL_AT_POINT"])
score = over_training.Watcher.__call__


def killed_while_scoring(self, step, *args, **kwargs):
  if step == kill_step:  # right after the step's checkpoint is committed
    done = os.path.join(self._wd.checkpoints, str(step), "commit_success.txt")
    while not os.path.exists(done):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
  return score(self, step, *args, **kwargs)


over_training.Watcher.__call__ = killed_while_scoring
sys.argv = [sys.argv[0]] + sys.argv[1:]
runpy.run_path(os.path.join(os.getcwd(), "main.py"), run_name="__main__")
"""


@pytest.mark.slow
def test_point_lost_to_a_kill_is_recomputed_on_resume(tmp_path):
  env = th.subprocess_env(1)
  env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=0"  # no re-exec: it would drop the patch
  flags = th.override_flags(training__num_steps=8, eval__every_steps=4,
                            eval__every_num_samples=8, eval__every_respacing="5") + [
                                "--mode=train"]
  straight = Workdir(str(tmp_path / "straight"))
  r = _main(flags + [f"--workdir={straight.root}"], env)
  assert r.returncode == 0, r.stderr
  killed = Workdir(str(tmp_path / "killed"))
  script = tmp_path / "kill_at_point.py"
  script.write_text(KILL_AT_POINT)
  r = subprocess.run([sys.executable, str(script)] + flags + [f"--workdir={killed.root}"],
                     cwd=th.REPO, env=dict(env, KILL_AT_POINT="4"), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == -signal.SIGKILL, r.stderr
  assert os.path.exists(os.path.join(killed.checkpoints, "4", "commit_success.txt"))
  r = _main(flags + [f"--workdir={killed.root}"], env)
  assert r.returncode == 0 and "resumed at step 4" in r.stdout + r.stderr, r.stderr
  assert _read(killed.over_training_json)["points"] == _read(straight.over_training_json)["points"]


@pytest.mark.slow
def test_changed_curve_settings_leave_the_curve_out_of_the_report(workdir, capsys):
  report = stages.run(_config("eval.every_steps=0"), workdir)
  out = capsys.readouterr().out
  assert "over_training" not in report and "eval.every_steps: 4 -> 0" in out
  assert not any("over training" in l for l in stages.summary_lines(report, Workdir(workdir)))
  report = stages.run(_config("eval.every_num_samples=16"), workdir)
  out = capsys.readouterr().out
  assert "eval: made with other settings" in out
  assert "over_training" not in report and "eval.every_num_samples: 8 -> 16" in out


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["another_runs_file", "truncated"])
def test_replaced_or_truncated_samples_are_redone(workdir, other_run, finished, damage, capsys):
  wd = Workdir(workdir)
  npz = os.path.join(wd.samples_dir, NPZ)
  original = _bytes(npz)
  if damage == "truncated":
    with open(npz, "r+b") as f:
      f.truncate(100)
  else:
    shutil.copy(os.path.join(Workdir(other_run).samples_dir, NPZ), npz)
  report = stages.run(_config(), workdir)
  out = capsys.readouterr().out
  assert not any(l.startswith("sample: ") and "skipped" in l for l in out.splitlines())
  assert f"samples: samples/{NPZ} changed since it was made" in out
  assert "(skipped)" in out  # training was not redone
  assert _bytes(npz) == original
  assert report["replicate_ratio"] == finished[1]["replicate_ratio"]


@pytest.mark.slow
def test_unfinished_training_is_sampled_only_when_asked(workdir):
  """Checkpoint 8 of a config that asks for 16 steps."""
  wd = Workdir(workdir)
  longer = ("training.num_steps=16",)
  shutil.rmtree(wd.samples_dir)
  r = _main(_flags(*longer) + [f"--workdir={workdir}", "--mode=sample"])
  _one_error_line(r, "step 8 of 16", "--allow_unfinished")
  assert not os.path.exists(wd.samples_dir)
  r = _main(_flags(*longer) + [f"--workdir={workdir}", "--mode=eval"])
  _one_error_line(r)
  before = Image.open(wd.ratio_hist_png).size
  for mode in ("sample", "eval"):
    r = _main(_flags(*longer) + [f"--workdir={workdir}", f"--mode={mode}", "--allow_unfinished"])
    assert r.returncode == 0, r.stderr
  assert "(training unfinished: step 8 of 16)" in r.stdout  # the summary's first line
  report = _read(wd.report_json)
  assert report["train_step"] == 8 and report["train_num_steps"] == 16
  assert report["training"] == "unfinished: step 8 of 16"
  for png in (wd.ratio_hist_png, wd.nearest_neighbors_png, wd.samples_grid):
    assert os.path.exists(png)
  width, height = Image.open(wd.ratio_hist_png).size
  assert width == before[0] and height > before[1]  # the step-8-of-16 band on top
  r = _main(_flags(*longer) + [f"--workdir={workdir}", "--mode=eval"])
  _one_error_line(r, "step 8 of 16")


@pytest.mark.slow
def test_a_checkpoint_of_another_run_is_refused(workdir, other_run):
  wd = Workdir(workdir)
  step = os.path.join(wd.checkpoints, "8")
  shutil.rmtree(step)
  shutil.copytree(os.path.join(Workdir(other_run).checkpoints, "8"), step)
  samples = os.path.join(wd.samples_dir, NPZ)
  original = _bytes(samples)
  with pytest.raises(errors.WorkdirError, match="another run"):
    stages.run(_config(), workdir)
  with pytest.raises(errors.WorkdirError, match="another run"):
    stages.run(_config("sampling.num_samples=8", "sampling.batch_size=8"), workdir, ("sample",))
  with pytest.raises(errors.WorkdirError, match="another run"):
    stages.run(_config("training.num_steps=12"), workdir, ("train",))
  assert _bytes(samples) == original


def test_a_users_config_json_is_not_replaced(tmp_path):
  workdir = tmp_path / "mine"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"learning_rate": 0.1}\n')
  r = _main(_flags() + [f"--workdir={workdir}", "--mode=train"])
  _one_error_line(r, "config.json", "not written by mem_diffusion")
  assert (workdir / "config.json").read_text() == '{"learning_rate": 0.1}\n'
  assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_a_failing_sample_stage_keeps_the_completed_samples(workdir, monkeypatch):
  wd = Workdir(workdir)
  kept = [os.path.join(wd.samples_dir, NPZ), wd.samples_record, wd.eval_record, wd.report_json]
  before = [_bytes(p) for p in kept]
  with pytest.raises(errors.ConfigError, match="sampling.respacing='0'"):
    stages.run(_config("sampling.respacing=0"), workdir, ("sample",))

  def fail(*args, **kwargs):
    raise RuntimeError("sampling failed")

  monkeypatch.setattr(sampling, "make_chunk_sampler", fail)
  with pytest.raises(RuntimeError, match="sampling failed"):
    stages.run(_config("sampling.num_samples=8", "sampling.batch_size=8"), workdir, ("sample",))
  assert [_bytes(p) for p in kept] == before


@pytest.mark.slow
def test_a_deleted_report_is_named(workdir, finished, capsys):
  os.remove(Workdir(workdir).report_json)
  report = stages.run(_config(), workdir)
  out = capsys.readouterr().out
  assert "eval: eval/report.json is missing; redoing" in out and "()" not in out
  assert report["replicate_ratio"] == finished[1]["replicate_ratio"]


@pytest.mark.slow
def test_samples_without_their_record_are_named(workdir):
  wd = Workdir(workdir)
  os.remove(wd.samples_record)
  with pytest.raises(errors.WorkdirError) as e:
    stages.run(_config(), workdir, ("eval",))
  message = str(e.value)
  assert "no finished samples" not in message
  assert "has no record" in message and "--mode=sample" in message


@pytest.mark.slow
@pytest.mark.parametrize("record", ["samples", "eval"])
@pytest.mark.parametrize("content", ["[]", '{"fingerprint": ', '"text"'])
def test_a_damaged_record_is_redone_with_one_line(workdir, record, content, capsys):
  wd = Workdir(workdir)
  path = wd.samples_record if record == "samples" else wd.eval_record
  with open(path, "w") as f:
    f.write(content)
  report = stages.run(_config(), workdir)
  out = capsys.readouterr().out
  lines = [l for l in out.splitlines() if " is damaged " in l]
  assert len(lines) == 1 and lines[0].startswith(f"{record}: ") and "redoing" in lines[0]
  assert report["num_samples"] == 16
  assert isinstance(_read(path), dict)


@pytest.mark.slow
def test_eval_of_samples_older_than_the_checkpoint_is_refused(workdir):
  """Training went on after sampling: --mode=eval must not report the old model."""
  wd = Workdir(workdir)
  record = _read(wd.samples_record)
  record["fingerprint"]["source"]["checkpoint_step"] = 4
  with open(wd.samples_record, "w") as f:
    json.dump(record, f)
  with pytest.raises(errors.WorkdirError, match="--mode=sample"):
    stages.run(_config(), workdir, ("eval",))
  np.testing.assert_equal(_read(wd.samples_record), record)


@pytest.mark.slow
def test_chains_score_the_newest_params(workdir):
  """A params file exported at step 8 must not be scored as step 12's model."""
  from mem_diffusion.experiments import chains  # pylint: disable=g-import-not-at-top
  out = os.path.join(workdir, "chains")
  chains.compare(_config(), workdir, ["10"])
  params = os.path.join(out, "params.msgpack")
  before = _bytes(params)
  chains.compare(_config("training.num_steps=12"), workdir, ["10"])
  assert _read(os.path.join(out, "summary.json"))["params"]["step"] == 12
  assert _bytes(params) != before
  record = _read(os.path.join(out, "10", "samples", "record.json"))
  assert record["fingerprint"]["source"]["sha256"] == stages.records.file_digest(params)["sha256"]
