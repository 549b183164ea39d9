"""The sweep on a SLURM cluster, through submitit.

  python -m mem_diffusion.sweep --cluster=slurm --slurm_partition=gpu \\
      --root=runs/study --seeds=0,1,2 --configs=...   # submits, returns
  (the same command again)                            # collects, draws the figures

Every (config, seed) that is not complete becomes one task of one SLURM array
(submitit's batch submission); a task runs the sweep's worker command
(workers.py) on the GPUs SLURM gave it, so it trains, samples and evaluates
exactly as a local worker does, resuming from the run's orbax checkpoint.

Time limits and preemption: SLURM sends USR2 `signal_delay_s` (90) seconds
before a task's time limit, or on preemption where the cluster is set up for
it. submitit then calls RunTask.checkpoint, which sends SIGTERM to the worker
(it finishes its step, saves and exits) and requeues the task; the requeued
task starts the worker again, which resumes. A cluster that preempts with
SIGTERM reaches the worker directly, and `--requeue` lets SLURM queue the
job again. A worker ignores USR2 itself: one stop signal, from its task.

Rerunning the command never submits a run twice: the job ids are kept in
`<root>/slurm/jobs.json`, and a run whose job is still queued or running is
left alone; one whose job ended without finishing it is submitted again.
Finished runs go into `summary.*` and the figures, as after a local sweep.
`<root>` must be on a filesystem the compute nodes share.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import flags
import submitit

from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.experiments import workers

# Each timeout requeues the task once; 20 slices of --slurm_time bound a run
# that cannot finish (a run that diverges is failed, not requeued).
MAX_TIMEOUTS = 20
# Seconds a worker gets to save after SIGTERM; below submitit's 90 s warning.
SAVE_SECONDS = 75
# SLURM states of a job that will still run (sacct's spelling).
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING",
          "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED",
          "READY"}
CLUSTERS = ("none", "slurm", "local")


@dataclasses.dataclass(frozen=True)
class Options:
  partition: str = ""
  time_min: int = 1440
  gpus_per_task: int = 1
  cpus_per_task: int = 0  # 0: the partition's default
  array_parallelism: int = 256
  setup: tuple[str, ...] = ()
  extra: tuple[tuple[str, str], ...] = ()  # further sbatch options, e.g. ('account', 'lab')


def define_flags() -> list[str]:
  """The sweep's cluster flags; returns their names."""
  flags.DEFINE_enum("cluster", "none", CLUSTERS, "Where the runs go: 'none' = this host "
                    "(--jobs); 'slurm' = one SLURM array through submitit (rerun the command "
                    "to collect); 'local' = submitit's local executor (a trial of that path).")
  flags.DEFINE_string("slurm_partition", "", "SLURM partition ('' = the cluster's default).")
  flags.DEFINE_integer("slurm_time", 1440, "Minutes per task before it saves and requeues.",
                       lower_bound=5)
  flags.DEFINE_integer("slurm_gpus_per_task", 1, "GPUs per run.", lower_bound=0)
  flags.DEFINE_integer("slurm_cpus_per_task", 0, "CPUs per run (0 = the partition's default).",
                       lower_bound=0)
  flags.DEFINE_integer("slurm_array_parallelism", 256, "Runs of the array at once.",
                       lower_bound=1)
  flags.DEFINE_multi_string("slurm_setup", [], "Shell line run before each task, e.g. "
                            "'module load cuda'; repeatable.")
  flags.DEFINE_multi_string("slurm_extra", [], "Another sbatch option as key=value, e.g. "
                            "account=lab or constraint=h100; repeatable.")
  return ["cluster", "slurm_partition", "slurm_time", "slurm_gpus_per_task",
          "slurm_cpus_per_task", "slurm_array_parallelism", "slurm_setup", "slurm_extra"]


def options_from_flags(values) -> Options:
  extra = []
  for item in values.slurm_extra:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise errors.ConfigError(f"--slurm_extra={item}: expected key=value")
    extra.append((key.strip(), value.strip()))
  return Options(values.slurm_partition, values.slurm_time, values.slurm_gpus_per_task,
                 values.slurm_cpus_per_task, values.slurm_array_parallelism,
                 tuple(values.slurm_setup), tuple(extra))


class RunTask(submitit.helpers.Checkpointable):
  """One run as a submitit task: the worker command, resumable by design."""

  def __init__(self, command: Sequence[str], workdir: str, cwd: str):
    self.command, self.workdir, self.cwd = list(command), workdir, cwd
    self._proc: subprocess.Popen | None = None

  def __call__(self) -> str:
    log_path = os.path.join(self.workdir, "sweep.log")
    os.makedirs(self.workdir, exist_ok=True)
    with open(log_path, "a") as log:
      # Not a session of its own: a signal SLURM sends the whole step reaches it.
      self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
          self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
          env=workers.worker_env({}))
      code = self._proc.wait()
    self._proc = None
    if code:
      raise errors.RunFailedError(f"the run in {self.workdir} exited {code}; its log "
                                  f"{log_path} ends:\n{workers.log_tail(log_path)}")
    return self.workdir

  def checkpoint(self, *args: Any, **kwargs: Any):
    """Called by submitit on USR2: the worker saves and stops, then the task requeues."""
    proc = self._proc
    if proc is not None and proc.returncode is None:
      proc.send_signal(signal.SIGTERM)
      if not _reaped(proc.pid, SAVE_SECONDS):
        proc.kill()
    return super().checkpoint(*args, **kwargs)

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_proc"] = None  # the requeued task starts its own worker
    return state


def _reaped(pid: int, seconds: float) -> bool:
  """Waits for the child `pid` to exit. Not Popen.wait: this runs in a signal
  handler that interrupted __call__'s Popen.wait, which holds Popen's lock."""
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    try:
      if os.waitpid(pid, os.WNOHANG)[0]:
        return True
    except ChildProcessError:
      return True
    time.sleep(0.2)
  return False


def make_executor(folder: str, cluster: str, options: Options, cwd: str):
  """The submitit executor of one submission: every task 1 node, 1 process."""
  try:
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=MAX_TIMEOUTS,
                                     local_max_num_timeout=MAX_TIMEOUTS)
  except RuntimeError as e:  # no srun on this machine
    raise errors.ConfigError(f"--cluster={cluster}: {e}") from None
  # The task unpickles RunTask, so the package must import on the node.
  setup = list(options.setup) + [
      "export PYTHONPATH=" + shlex.quote(workers.PACKAGE_ROOT) + "${PYTHONPATH:+:$PYTHONPATH}",
      "cd " + shlex.quote(cwd)]
  params: dict[str, Any] = dict(
      name="mem_diffusion", timeout_min=options.time_min, nodes=1, tasks_per_node=1,
      slurm_array_parallelism=options.array_parallelism, slurm_setup=setup,
      local_setup=setup, slurm_additional_parameters={"requeue": True, **dict(options.extra)})
  if options.gpus_per_task:
    params["slurm_gpus_per_task"] = options.gpus_per_task
  if options.cpus_per_task:
    params["cpus_per_task"] = options.cpus_per_task
  if options.partition:
    params["slurm_partition"] = options.partition
  executor.update_parameters(**params)
  return executor


def _job_state(cluster: str, folder: str, job_id: str) -> str:
  """What the run's job is doing now: an ACTIVE state, or why it no longer runs."""
  if cluster == "local":  # the job id is the pid of submitit's controller
    done = submitit.LocalJob(folder=folder, job_id=job_id).paths.result_pickle.exists()
    try:
      with open(f"/proc/{int(job_id)}/stat") as f:
        alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
      alive = False
    return "RUNNING" if alive and not done else "ENDED"
  job = submitit.SlurmJob(folder=folder, job_id=job_id)
  state = (job.state or "UNKNOWN").split()[0].upper()  # 'CANCELLED by 123' -> 'CANCELLED'
  if state == "UNKNOWN":
    # No word from sacct (none here, or the job is too new): a job that wrote
    # its result has ended; otherwise it counts as queued, never submitted twice.
    return "ENDED" if job.paths.result_pickle.exists() else "UNKNOWN"
  return state


@dataclasses.dataclass
class Outcome:
  complete: list[tuple[int, dict[str, Any]]]  # (plan index, report) of finished runs
  queued: list[tuple[int, str, str]]  # (plan index, job id, state) still to finish
  submitted: list[Any]  # submitit jobs started by this call


def submit_and_collect(plan, root: str, overrides: Sequence[str], *, cluster: str,
                       options: Options, cache: str, verbose: bool) -> Outcome:
  """Collects finished runs, leaves queued ones alone and submits the rest as one array."""
  folder = os.path.join(os.path.abspath(root), "slurm")
  record_path = os.path.join(folder, "jobs.json")
  try:
    record = {}
    if os.path.exists(record_path):
      with open(record_path) as f:
        record = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(f"{record_path}: {e}: remove it to submit every unfinished "
                              "run again") from None
  if cluster == "slurm":
    submitit.SlurmJob.watcher.clear()  # states as of now, for every job below
  out, todo, n = Outcome([], [], []), [], len(plan)
  for i, (_, seed, config, workdir) in enumerate(plan):
    report = workers.finished_report(config, workdir)
    if report is not None:
      out.complete.append((i, report))
      continue
    entry = record.get(os.path.abspath(workdir))  # the same run from any directory
    if entry and entry.get("cluster") == cluster:
      state = _job_state(cluster, folder, entry["job_id"])
      if state in ACTIVE or state == "UNKNOWN":
        out.queued.append((i, entry["job_id"], state))
        print(f"[{i + 1}/{n}] {config.name} seed {seed}: job {entry['job_id']} {state}",
              flush=True)
        continue
      print(f"[{i + 1}/{n}] {config.name} seed {seed}: job {entry['job_id']} ended ({state}) "
            f"before the run finished (log: {os.path.join(workdir, 'sweep.log')}); "
            "submitting it again", file=sys.stderr, flush=True)
    todo.append(i)
  if todo:
    cwd = os.getcwd()
    executor = make_executor(folder, cluster, options, cwd)
    with executor.batch():
      for i in todo:
        spec, seed, _, workdir = plan[i]
        command = workers.worker_command(spec, seed, os.path.abspath(root), overrides, cache,
                                         verbose, -1)
        out.submitted.append(executor.submit(RunTask(command, os.path.abspath(workdir), cwd)))
    for i, job in zip(todo, out.submitted):
      record[os.path.abspath(plan[i][3])] = {"cluster": cluster, "job_id": job.job_id}
      out.queued.append((i, job.job_id, "SUBMITTED"))
    files.write_json(record_path, record)
    array = out.submitted[0].job_id.split("_")[0]
    print(f"submitted {len(todo)} run(s) to {cluster} (job {array}; submitit logs in "
          f"{folder}, each run's own in <workdir>/sweep.log)", flush=True)
  if out.queued:
    print(f"{len(out.complete)} of {n} runs complete, {len(out.queued)} queued or running: "
          "rerun this command when they have finished to collect them", flush=True)
  return out
