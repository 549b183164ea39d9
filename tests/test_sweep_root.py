"""A sweep owns its root: one sweep at a time, each run once, every run inside,
and a summary of every finished run under the root.

The cases a user meets go through the real `python -m mem_diffusion.sweep`
(and the capacity search, which shares the root's lock).
"""

import csv
import json
import os
import subprocess
import sys
import time

import pytest

import train_helpers as th
from test_cli_errors import assert_one_line, run_cli

MICRO = ["--set=training.num_steps=8", "--set=diffusion.steps=20", "--set=sampling.respacing=10",
         "--set=sampling.num_samples=16", "--set=sampling.batch_size=16",
         "--set=eval.num_heldout=16", "--set=eval.blend_k=2"]
X, Y = "configs/toy_capacity.py:n=4,tiny", "configs/toy_capacity.py:n=6,tiny"


def _sweep_args(root, spec, *extra):
  return [f"--root={root}", f"--configs={spec}", "--seeds=0",
          f"--compile_cache={os.environ['JAX_COMPILATION_CACHE_DIR']}"] + MICRO + list(extra)


def _summary_names(root):
  with open(os.path.join(root, "summary.csv")) as f:
    return [(r["name"], r["seed"]) for r in csv.DictReader(f)]


@pytest.mark.slow  # a subprocess or a whole run: kept out of the fast suite's 5 minutes
def test_a_second_sweep_on_a_held_root_exits_2_and_the_summary_keeps_every_run(tmp_path):
  root = tmp_path / "root"
  env = th.subprocess_env(1)
  env["MEM_DIFFUSION_HUGE_PAGES"] = "0"
  with open(tmp_path / "a.log", "w") as log:
    first = subprocess.Popen([sys.executable, "-m", "mem_diffusion.sweep"] + _sweep_args(root, X),
                             cwd=th.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    for _ in range(600):  # the first sweep has taken the root once it announces its run
      if "[1/1] toy_capacity_4 seed 0 ->" in (tmp_path / "a.log").read_text():
        break
      assert first.poll() is None, (tmp_path / "a.log").read_text()
      time.sleep(0.1)
    second = run_cli("sweep", _sweep_args(root, Y))
    assert first.poll() is None, "the first sweep ended before the second one was tried"
    assert_one_line(second, 2, f"--root {root} is in use by another sweep")
    assert "pid " in second.stderr
    assert not (root / "toy_capacity_6").exists()
  finally:
    assert first.wait(timeout=600) == 0, (tmp_path / "a.log").read_text()
  assert _summary_names(root) == [("toy_capacity_4", "0")]
  # Now the root is free: the next sweep's summary holds its run and the first one's.
  again = run_cli("sweep", _sweep_args(root, Y), timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "1 runs; summary in" in again.stdout
  assert _summary_names(root) == [("toy_capacity_6", "0"), ("toy_capacity_4", "0")]
  with open(root / "summary.json") as f:
    assert [r["name"] for r in json.load(f)["rows"]] == ["toy_capacity_6", "toy_capacity_4"]
  # A run redone by hand since its row was filed drops out instead of standing stale.
  report = root / "toy_capacity_4" / "seed0" / "eval" / "report.json"
  report.write_text(report.read_text().replace('"replicate_ratio"', '"replicate_ratio" ', 1))
  from mem_diffusion.experiments import sweep_root  # pylint: disable=g-import-not-at-top
  assert [r["name"] for r in sweep_root.finished_rows(str(root))] == ["toy_capacity_6"]


def test_capacity_search_refuses_a_root_another_one_holds(tmp_path):
  from mem_diffusion.experiments import sweep_root  # pylint: disable=g-import-not-at-top
  root = tmp_path / "root"
  with sweep_root.hold(str(root)):
    r = run_cli("capacity", ["--config=configs/toy_capacity.py", f"--root={root}"])
  assert_one_line(r, 2, "is in use by another sweep or capacity search")
  assert sorted(os.listdir(root)) == [".sweep.lock"]


@pytest.mark.parametrize("args,needle", [
    (["--seeds=1,1", "--jobs=2"], "seed 1 is given twice"),
    (["--seeds=0,00"], "seed 0 is given twice"),
    ([f"--configs={X}", "--seeds=0"], "seed 0 is given twice"),
    (["--seeds="], "--seeds is empty"),
    (["--set=name=../../outside"], "name='../../outside': a sweep puts each run in"),
    (["--set=name=/tmp/abs"], "name='/tmp/abs'"),
    (["--set=name=.."], "name='..'"),
    (["--set=name=.hidden"], "name='.hidden'"),
    (["--set=name=jax_cache"], "name='jax_cache' is one of the sweep root's own entries"),
    (["--set=name=summary.csv"], "name='summary.csv'"),
])
def test_a_plan_that_leaves_the_root_or_repeats_a_run_is_refused(tmp_path, args, needle):
  root = tmp_path / "a" / "b"
  r = run_cli("sweep", [f"--root={root}", f"--configs={X}"] + MICRO + args)
  assert_one_line(r, 2, needle)
  assert "summary in" not in r.stdout
  assert sorted(os.listdir(tmp_path)) == []  # nothing run, inside the root or out of it


@pytest.mark.parametrize("args,needle", [
    (["--seeds="], "--seeds=: expected distinct seeds, at least one"),
    (["--seeds=0,0"], "--seeds=0,0: expected distinct seeds"),
    (["--resolution=nan"], "--resolution=nan: expected a finite factor > 1"),
    (["--resolution=inf"], "--resolution=inf"),
    (["--low=nan"], "--low=nan and --high=0.9"),
    (["--lo=16", "--hi=16"], "--lo=16 and --hi=16"),
])
def test_capacity_arguments_are_one_line_before_any_run(tmp_path, args, needle):
  root = tmp_path / "root"
  r = run_cli("capacity", ["--config=configs/toy_capacity.py", f"--root={root}"] + args)
  assert_one_line(r, 2, needle)
  assert not root.exists()


def test_rows_of_damaged_or_unfinished_runs_are_left_out(tmp_path):
  from mem_diffusion.experiments import sweep_root  # pylint: disable=g-import-not-at-top
  for name, report in (("a", "{}"), ("b", "{}"), ("c", None)):
    workdir = tmp_path / name / "seed0"
    (workdir / "eval").mkdir(parents=True)
    if report is not None:
      (workdir / "eval" / "report.json").write_text(report)
      (workdir / "eval" / "record.json").write_text("{}")
    sweep_root.save_row(str(workdir), {"name": name, "seed": 0})
  (tmp_path / "b" / "seed0" / sweep_root.ROW_FILE).write_text('{"row": ')  # damaged
  assert [r["name"] for r in sweep_root.finished_rows(str(tmp_path))] == ["a"]
  (tmp_path / "a" / "seed0" / "eval" / "record.json").unlink()  # being evaluated again
  assert sweep_root.finished_rows(str(tmp_path)) == []


def test_a_folder_where_the_summary_goes_is_refused_before_any_run(tmp_path):
  root = tmp_path / "root"
  (root / "summary.csv").mkdir(parents=True)
  r = run_cli("sweep", [f"--root={root}", f"--configs={X}"] + MICRO)
  assert_one_line(r, 2, f"{root / 'summary.csv'} is a directory where the sweep writes a file")
  assert sorted(os.listdir(root)) == ["summary.csv"]


def test_capacity_refuses_an_override_of_the_size_it_searches(tmp_path):
  r = run_cli("capacity", ["--config=configs/toy_capacity.py", f"--root={tmp_path / 'r'}",
                           "--set=data.num_original=5"])
  assert_one_line(r, 2, "the search sets data.num_original to each N it tries")


def test_more_jobs_than_runs_start_no_more_workers(tmp_path, monkeypatch):
  """--jobs=10**8 on a CPU host built 10**8 worker slots (22 GB, minutes) for one run."""
  from mem_diffusion import errors  # pylint: disable=g-import-not-at-top
  from mem_diffusion.experiments import devices, sweep, workers  # pylint: disable=g-import-not-at-top
  asked = []
  real = devices.slots
  monkeypatch.setattr(devices, "slots",
                      lambda host, jobs, per_run: asked.append(jobs) or real(host, 1, per_run))
  monkeypatch.setattr(workers, "worker_command", lambda *a, **k: [sys.executable, "-c", ""])
  with pytest.raises(errors.RunFailedError, match="1 of 1 runs failed"):  # the fake made no report
    sweep.sweep([X], [0], str(tmp_path), [m[len("--set="):] for m in MICRO], jobs=10**8,
                devices=0, compile_cache="none")
  assert asked == [1]
