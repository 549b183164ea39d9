"""`sweep --jobs=J`: each run in a worker process, at most J at once.

A worker is `python -m mem_diffusion.sweep --worker` for one (config, seed),
its output appended to `<workdir>/sweep.log`. Where it runs comes from its
slot (devices.py): a CPU core on a CPU host, GPUs of its own on a GPU host.
The same worker command is what a SLURM task runs (slurm.py), so a run
behaves the same whichever way the sweep starts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from mem_diffusion import errors
from mem_diffusion.experiments import devices
from mem_diffusion.run.workdir import Workdir

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SweepStopped(errors.Preempted):
  """SIGINT/SIGTERM during a parallel sweep: the workers saved and stopped."""

  def __init__(self, signum: int, names: Sequence[str]):
    errors.UserError.__init__(  # pylint: disable=non-parent-init-called
        self, f"stopped by signal {signum}; {len(names)} running run(s) saved their state "
        f"({', '.join(names) or 'none'}): rerun the same command to resume")
    self.step, self.signum = None, signum


def finished_report(config, workdir: str) -> dict[str, Any] | None:
  """The report of a run whose every stage is complete, else None (no worker needed)."""
  from mem_diffusion.run import stages  # pylint: disable=g-import-not-at-top  # JAX loads after flag parsing
  try:
    if not all(stages.is_complete(config, workdir, s) for s in stages.STAGES):
      return None
    with open(Workdir(workdir).report_json) as f:
      return json.load(f)
  except (errors.UserError, OSError, ValueError):
    return None  # the worker meets the problem and reports it in the run's log


def log_tail(path: str, lines: int = 12) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError as e:
    return f"(no log: {e.strerror})\n"


def worker_command(spec: str, seed: int, root: str, overrides: Sequence[str], cache: str,
                   verbose: bool, cpu: int) -> list[str]:
  return ([sys.executable, "-m", "mem_diffusion.sweep", "--worker", f"--pin_cpu={cpu}",
           f"--configs={spec}", f"--seeds={seed}", f"--root={root}", f"--compile_cache={cache}",
           f"--verbose={str(bool(verbose)).lower()}"] + [f"--set={o}" for o in overrides])


def worker_env(extra: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of a worker: this one, the package importable, then the slot's."""
  env = dict(os.environ if base is None else base)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
  env.update(extra)
  return env


def run_parallel(plan, root: str, overrides: Sequence[str], slots: Sequence[devices.Slot],
                 cache: str, verbose: bool,
                 finish: Callable[[int, dict[str, Any], float | None], None]) -> None:
  """Runs the plan with one worker per slot at a time; finish(i, report, seconds) after each.

  Raises RunFailedError naming the failed runs after all others finished, or
  SweepStopped when a signal stopped the sweep.
  """
  n, pending, running = len(plan), list(enumerate(plan)), {}
  free_slots, failed = list(range(len(slots))), []
  caught: list[int] = []
  previous = {s: signal.signal(s, lambda signum, _: caught.append(signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while (pending or running) and not caught:
      while pending and free_slots and not caught:
        i, (spec, seed, config, workdir) = pending.pop(0)
        report = finished_report(config, workdir)
        if report is not None:
          finish(i, report, None)
          continue
        slot = slots[free_slots[0]]
        log_path = os.path.join(workdir, "sweep.log")
        try:
          os.makedirs(workdir, exist_ok=True)
          with open(log_path, "a") as log:
            # Its own session: a terminal's Ctrl-C reaches only this process,
            # which then stops every worker the same way.
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                worker_command(spec, seed, root, overrides, cache, verbose, slot.cpu),
                stdout=log, stderr=subprocess.STDOUT, env=worker_env(slot.env),
                start_new_session=True)
        except OSError as e:
          failed.append((i, f"{config.name} seed {seed}"))
          print(f"[{i + 1}/{n}] {config.name} seed {seed}: FAILED to start in {workdir} "
                f"({e.strerror or e})", file=sys.stderr, flush=True)
          continue
        running[proc] = (i, free_slots.pop(0), time.time(), log_path)
        print(f"[{i + 1}/{n}] {config.name} seed {seed} -> {workdir}"
              + (f" ({slot.label})" if slot.label else ""), flush=True)
      for proc in [p for p in running if p.poll() is not None]:
        i, slot_index, start, log_path = running.pop(proc)
        free_slots.append(slot_index)
        _, seed, config, workdir = plan[i]
        report = finished_report(config, workdir) if proc.returncode == 0 else None
        if report is None:
          failed.append((i, f"{config.name} seed {seed}"))
          print(log_tail(log_path), end="", file=sys.stderr, flush=True)
          print(f"[{i + 1}/{n}] {config.name} seed {seed}: FAILED (exit {proc.returncode}); "
                f"log: {log_path}", file=sys.stderr, flush=True)
        else:
          finish(i, report, time.time() - start)
      time.sleep(0.2)
  finally:
    stopped = [f"{plan[i][2].name} seed {plan[i][1]}" for i, *_ in running.values()]
    for proc in running:
      proc.terminate()  # train.py saves on SIGTERM, then exits
    # Saving takes seconds; a second signal (or 5 minutes) kills the rest.
    deadline, signals = time.time() + 300, len(caught)
    while any(p.poll() is None for p in running):
      if time.time() > deadline or len(caught) > max(signals, 1):
        for proc in running:
          proc.kill()
      time.sleep(0.2)
    for s, handler in previous.items():
      signal.signal(s, handler)
  if caught:
    raise SweepStopped(caught[0], stopped)
  if failed:
    raise errors.RunFailedError(
        f"{len(failed)} of {n} runs failed: {', '.join(name for _, name in sorted(failed))}; "
        "each log is <workdir>/sweep.log; rerun the same command to retry them")
