"""Multi-process runs end, always, with one line: launch mistakes, per-host
workdirs, a missing or killed peer (2 processes x 2 CPU devices on localhost),
and a shared workdir where process 0 alone writes what all of them report."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mem_diffusion import errors
from mem_diffusion.run import multihost
import train_helpers as th

GUARD = os.path.join(th.REPO, "mem_diffusion", "run", "stderr_guard.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp_path, workdirs, extra=(), **changes):
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for pid, workdir in enumerate(workdirs):
    args = th.override_flags(**changes) + [
        f"--workdir={workdir}", f"--coordinator_address={address}", "--num_processes=2",
        f"--process_id={pid}", *extra]
    procs.append(th.start_main(args, th.subprocess_env(2), str(tmp_path / f"p{pid}.log")))
  return procs


def _log(tmp_path, pid: int, expect: str = "", wait: float = 5.0) -> str:
  """The process's log; the guard may still be writing its last line."""
  deadline = time.monotonic() + wait
  while True:
    text = open(tmp_path / f"p{pid}.log", errors="replace").read()
    if expect in text or time.monotonic() > deadline:
      return text
    time.sleep(0.1)


def _error_lines(text: str) -> list[str]:
  return [l for l in text.splitlines() if l.startswith("error:")]


def _clean(text: str) -> bool:
  return "Traceback" not in text and "Check failure" not in text and " @ 0x" not in text


# ---------------------------------------------------------------------------
# Launch mistakes: one line, exit 2, before anything waits.

@pytest.mark.parametrize("args, match", [
    (("127.0.0.1:1234", 2, 2), "--process_id=2: expected 0..1"),
    (("127.0.0.1:1234", 2, -1), "--process_id=-1"),
    (("127.0.0.1:1234", 0, 0), "--num_processes=0"),
    (("localhost", 2, 0), "expected HOST:PORT"),
    (("host:99999", 2, 0), "expected HOST:PORT"),
])
def test_launch_settings_refused(args, match):
  with pytest.raises(errors.ConfigError, match=match):
    multihost.launch_settings(*args)


def test_half_a_launch_is_refused():
  with pytest.raises(errors.ConfigError, match="missing: --num_processes, --process_id"):
    multihost.start("127.0.0.1:1234", guard=False)


@pytest.mark.parametrize("flags, env, match", [
    (["--multihost"], {}, "--multihost found no cluster"),
    ([], {"JAX_PLATFORMS": "cuda"}, "JAX_PLATFORMS='cuda': JAX cannot start"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=5"], {},
     "--process_id=5: expected 0..1"),
])
def test_platform_and_launch_mistakes_are_one_line(tmp_path, flags, env, match):
  cmd = [sys.executable, os.path.join(th.REPO, "main.py"), f"--config={th.CONFIG_FILE}",
         f"--workdir={tmp_path / 'run'}", "--mode=train", *flags]
  environ = {**th.subprocess_env(1), **env}
  for key in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    environ.pop(key, None)
  done = subprocess.run(cmd, cwd=th.REPO, env=environ, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines() == [l for l in _error_lines(done.stderr)], done.stderr
  assert len(_error_lines(done.stderr)) == 1 and match in done.stderr, done.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


# ---------------------------------------------------------------------------
# The stderr guard.

def _guard(text: str) -> str:
  return subprocess.run([sys.executable, GUARD, "7"], input=text, capture_output=True,
                        text=True, timeout=30).stdout


ABORT = """\
W1206 04:12:00.036676   29625 preemption_sync_manager.cc:147] Failed to retrieve preemption notice
Additional GRPC error information from remote target coordination_service:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}.
E1206 04:12:00.036744   29625 coordination_service_agent.cc:289] Polled an error from coordination service.
F1206 04:12:00.036748   29625 client.h:80] Terminating process because the JAX distributed service detected fatal errors. absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed.
*** Check failure stack trace: ***
    @     0x7efe73840634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""


def test_guard_turns_the_runtime_abort_into_one_line():
  out = _guard("train  step 3/8\n" + ABORT)
  assert out.splitlines()[0] == "train  step 3/8"
  assert len(out.splitlines()) == 2, out
  assert out.splitlines()[1].startswith("error: lost contact with the run's other processes "
                                        "(process 1 stopped answering for 7 s)")


def test_guard_keeps_the_runs_own_error_and_other_logs():
  own = "W1206 04:12:00.000001   29625 train.py:10] a warning of the run's own\n"
  out = _guard(own + "error: disk full\n" + ABORT)
  assert out == own + "error: disk full\n"


# ---------------------------------------------------------------------------
# Two processes.

@pytest.mark.slow
def test_per_host_workdirs_are_one_error_in_seconds(tmp_path):
  start = time.monotonic()
  procs = _start(tmp_path, [tmp_path / "a", tmp_path / "b"], ["--mode=train"])
  codes = [p.wait(300) for p in procs]
  logs = [_log(tmp_path, i, "error:") for i in range(2)]
  assert codes == [2, 2], logs
  for text in logs:
    assert len(_error_lines(text)) == 1 and "is not one directory shared" in text, text
    assert "NFS" in text and _clean(text), text
  assert not any(os.path.exists(tmp_path / d / "checkpoints") for d in "ab")
  print(f"separate workdirs refused after {time.monotonic() - start:.0f} s (startup included)")


@pytest.mark.slow
def test_shared_workdir_all_stages(tmp_path):
  workdir = tmp_path / "run"
  procs = _start(tmp_path, [workdir, workdir], ["--mode=all"], training__num_steps=8,
                 sampling__num_samples=12, sampling__batch_size=6, sampling__respacing="4")
  codes = [p.wait(600) for p in procs]
  logs = [_log(tmp_path, i) for i in range(2)]
  assert codes == [0, 0], logs
  assert all(not _error_lines(t) and _clean(t) for t in logs), logs
  with open(workdir / "eval" / "report.json") as f:
    report = json.load(f)
  digest = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()[:12]
  assert f"process 1 of 2: done; process 0 wrote the outputs (report sha256 {digest})" in logs[1]
  assert "== result:" in logs[0] and report["num_samples"] == 12
  assert not [n for n in os.listdir(workdir) if n.startswith(".shared_workdir_")]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_killed_peer_ends_the_other_with_one_line(tmp_path, victim):
  timeout, survivor = 20, 1 - victim
  procs = _start(tmp_path, [tmp_path / "run"] * 2, ["--mode=train", f"--peer_timeout={timeout}"],
                 training__num_steps=100000, training__checkpoint_every=100000,
                 training__log_every=1000)
  try:
    deadline = time.monotonic() + 300
    while "step 1/" not in _log(tmp_path, 0, wait=0) and time.monotonic() < deadline:
      assert procs[0].poll() is None, _log(tmp_path, 0)
      time.sleep(0.5)
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = procs[survivor].wait(timeout + 60)
    took = time.monotonic() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  text = _log(tmp_path, survivor, "error:")
  assert code != 0 and took < timeout + 30, (code, took, text)
  assert len(_error_lines(text)) == 1 and "lost contact" in text and _clean(text), text
  print(f"process {survivor} ended {took:.1f} s after process {victim} was killed "
        f"(exit {code}): {_error_lines(text)[0][:120]}")


@pytest.mark.slow
def test_coordinator_without_peer_ends_in_bounded_time(tmp_path):
  timeout = 5
  start = time.monotonic()
  args = th.override_flags() + [f"--workdir={tmp_path / 'run'}", "--mode=train",
                                f"--coordinator_address=127.0.0.1:{_free_port()}",
                                "--num_processes=2", "--process_id=0",
                                f"--peer_timeout={timeout}"]
  proc = th.start_main(args, th.subprocess_env(2), str(tmp_path / "p0.log"))
  code = proc.wait(timeout + 120)
  took = time.monotonic() - start
  text = _log(tmp_path, 0, "error:")
  assert code == 1, text
  assert len(_error_lines(text)) == 1 and "not every process connected" in text, text
  assert _clean(text) and took < timeout + 60, (took, text)
