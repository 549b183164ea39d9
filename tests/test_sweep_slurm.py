"""`sweep --cluster=slurm|local`: the study as submitit tasks, then collected.

No cluster is needed. The SLURM path runs against stand-in `sbatch`, `sacct`
and `srun` commands on PATH, which keep the sbatch script submitit wrote and
answer with the job states a test sets; the local path runs real tasks
through submitit's local executor.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import submitit

from mem_diffusion import errors
from mem_diffusion.experiments import slurm
from mem_diffusion.experiments import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = ("training.num_steps=8", "diffusion.steps=20", "sampling.respacing=10",
         "sampling.num_samples=16", "sampling.batch_size=16", "eval.num_heldout=16",
         "eval.blend_k=2")
SPECS = ["configs/toy_capacity.py:n=4,tiny", "configs/toy_capacity.py:n=6,tiny"]
OPTIONS = slurm.Options(partition="gpu", time_min=600, gpus_per_task=1, cpus_per_task=8,
                        array_parallelism=1, setup=("module load cuda",),
                        extra=(("account", "lab"),))

SBATCH = """#!/bin/sh
n=$(ls "$FAKE_SLURM" | grep -c '^sbatch_')
cp "$1" "$FAKE_SLURM/sbatch_$n.sh"
echo "Submitted batch job $((4242 + n))"
"""
SACCT = """#!/bin/sh
[ -f "$FAKE_SLURM/sacct.txt" ] || exit 1
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/sacct.txt"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
  """A PATH with sbatch/sacct/srun stand-ins; returns (their folder, sacct setter)."""
  state = tmp_path / "fake_slurm"
  state.mkdir()
  for name, text in (("sbatch", SBATCH), ("sacct", SACCT), ("srun", "#!/bin/sh\nexit 0\n")):
    path = state / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
  monkeypatch.setenv("FAKE_SLURM", str(state))
  monkeypatch.setenv("PATH", f"{state}{os.pathsep}{os.environ['PATH']}")

  def sacct(**states):
    (state / "sacct.txt").write_text("".join(f"{j}|{s}|node1\n" for j, s in states.items()))
  return state, sacct


def _submissions(state):
  return sorted(p.name for p in state.iterdir() if p.name.startswith("sbatch_"))


def _jobs(root):
  with open(os.path.join(root, "slurm", "jobs.json")) as f:
    return {os.path.basename(os.path.dirname(wd)): e["job_id"] for wd, e in json.load(f).items()}


def test_slurm_submits_one_array_of_resumable_runs(tmp_path, fake_slurm, capsys):
  state, _ = fake_slurm
  root = str(tmp_path / "study")
  assert sweep.sweep(SPECS, [0], root, MICRO, cluster="slurm", slurm_options=OPTIONS,
                     compile_cache="none") == []
  assert _submissions(state) == ["sbatch_0.sh"]
  text = (state / "sbatch_0.sh").read_text()
  for line in ("#SBATCH --array=0-1%1", "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu",
               "#SBATCH --time=600", "#SBATCH --cpus-per-task=8", "#SBATCH --nodes=1",
               "#SBATCH --ntasks-per-node=1", "#SBATCH --requeue", "#SBATCH --account=lab",
               "#SBATCH --signal=USR2@90", "module load cuda"):
    assert line in text.splitlines(), (line, text)
  setup, command = text.index("export PYTHONPATH=" + ROOT), text.index("-m submitit.core._submit")
  assert text.index("module load cuda") < setup < command and "srun " in text
  assert _jobs(root) == {"toy_capacity_4": "4242_0", "toy_capacity_6": "4242_1"}
  assert "submitted 2 run(s) to slurm (job 4242" in capsys.readouterr().out
  # Each task is the sweep's worker for one run, resumable from its checkpoint.
  task = submitit.helpers.DelayedSubmission.load(
      os.path.join(root, "slurm", "4242_1_submitted.pkl")).function
  assert isinstance(task, slurm.RunTask) and hasattr(task, "checkpoint")
  assert task.command[1:5] == ["-m", "mem_diffusion.sweep", "--worker", "--pin_cpu=-1"]
  assert f"--configs={SPECS[1]}" in task.command and "--seeds=0" in task.command
  assert f"--root={os.path.abspath(root)}" in task.command
  assert "--set=training.num_steps=8" in task.command
  assert task.workdir == os.path.join(os.path.abspath(root), "toy_capacity_6", "seed0")


def test_rerun_leaves_queued_runs_and_resubmits_ended_ones(tmp_path, fake_slurm, capsys):
  state, sacct = fake_slurm
  root = str(tmp_path / "study")
  run = lambda: sweep.sweep(SPECS, [0], root, MICRO, cluster="slurm",  # pylint: disable=unnecessary-lambda-assignment
                            slurm_options=OPTIONS, compile_cache="none")
  run()
  sacct(**{"4242_0": "RUNNING", "4242_1": "PENDING"})
  assert run() == [] and _submissions(state) == ["sbatch_0.sh"]
  out = capsys.readouterr().out
  assert "job 4242_0 RUNNING" in out and "job 4242_1 PENDING" in out
  os.remove(state / "sacct.txt")  # no accounting: a job never counts as ended by guess
  run()
  assert _submissions(state) == ["sbatch_0.sh"]
  sacct(**{"4242_0": "FAILED", "4242_1": "RUNNING"})
  run()
  assert _submissions(state) == ["sbatch_0.sh", "sbatch_1.sh"]
  assert "--array" not in (state / "sbatch_1.sh").read_text()  # one run: a plain job
  assert _jobs(root) == {"toy_capacity_4": "4243", "toy_capacity_6": "4242_1"}
  assert "toy_capacity_4 seed 0: job 4242_0 ended (FAILED)" in capsys.readouterr().err


def test_slurm_without_srun_is_one_error(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(errors.ConfigError, match="--cluster=slurm: .*srun"):
    sweep.sweep(SPECS[:1], [0], str(tmp_path / "r"), MICRO, cluster="slurm",
                compile_cache="none")


def test_jobs_with_a_cluster_is_one_error_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "mem_diffusion.sweep", "--cluster=slurm", "--jobs=2",
       f"--configs={SPECS[0]}", f"--root={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --jobs=2 is for --cluster=none; a cluster runs every run at once "
      "(--slurm_array_parallelism caps them)"]


def _wait(predicate, seconds, what):
  deadline = time.time() + seconds
  while not predicate():
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.5)


# A stand-in worker: a first start saves on SIGTERM and stops, a second resumes.
FAKE_WORKER = (
    "import os, signal, sys, time\n"
    "marker = sys.argv[1]\n"
    "if os.path.exists(marker):\n"
    "  print('resumed', flush=True); sys.exit(0)\n"
    "def stop(*_):\n"
    "  open(marker, 'w').close(); print('saved', flush=True); sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('up', os.getppid(), flush=True)\n"
    "time.sleep(120)\n"
    "sys.exit(1)\n")


def test_usr2_saves_the_run_and_requeues_the_task(tmp_path):
  """submitit's timeout/preemption signal: the worker saves, the task runs again."""
  workdir = str(tmp_path / "run")
  task = slurm.RunTask([sys.executable, "-c", FAKE_WORKER, str(tmp_path / "saved")], workdir,
                       ROOT)
  executor = slurm.make_executor(str(tmp_path / "jobs"), "local", slurm.Options(), ROOT)
  job = executor.submit(task)
  log = tmp_path / "run" / "sweep.log"
  try:
    _wait(lambda: log.exists() and "up " in log.read_text(), 120, "the worker")
    task_pid = int(log.read_text().split("up ")[1].split()[0])
    os.kill(task_pid, signal.SIGUSR2)
    _wait(job.done, 120, "the requeued task")
  finally:
    job.cancel()
  assert job.result() == workdir
  assert [l.split()[0] for l in log.read_text().splitlines()] == ["up", "saved", "resumed"]


@pytest.mark.slow
def test_local_cluster_runs_then_the_same_command_collects(tmp_path):
  root = str(tmp_path / "study")
  run = lambda: sweep.sweep(SPECS[:1], [0], root, MICRO, cluster="local",  # pylint: disable=unnecessary-lambda-assignment
                            compile_cache="none")
  assert run() == []
  (job_id,) = _jobs(root).values()
  result = os.path.join(root, "slurm", f"{job_id}_0_result.pkl")
  try:
    _wait(lambda: os.path.exists(result), 900, "the local job")
  finally:
    if not os.path.exists(result):
      os.kill(int(job_id), signal.SIGTERM)
  (row,) = run()
  assert row["name"] == "toy_capacity_4" and row["train_step"] == 8
  assert os.path.exists(os.path.join(root, "summary.csv"))
  with open(os.path.join(row["workdir"], "sweep.log")) as f:
    assert "== result:" in f.read()
  assert _jobs(root) == {"toy_capacity_4": job_id}  # collected, not submitted again
