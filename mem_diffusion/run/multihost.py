"""Multi-process runs that always end: start-up checks, timeouts, one line.

A run over several processes (hosts of a pod slice, nodes of a SLURM job)
fails in ways a one-process run cannot, and the JAX runtime's own answer to
most of them is to wait (for a peer that never starts) or to abort in C++
with a stack trace (when a peer dies). This module turns each into one
`error:` line within a stated bound:

- Mistakes in the launch (a process id out of range, a half-given
  coordinator, `--multihost` where JAX detects no cluster, JAX_PLATFORMS
  naming a backend this host lacks) are refused before anything waits: exit 2.
- `peer_timeout` (main.py --peer_timeout, DEFAULT_PEER_TIMEOUT s) bounds every
  wait for another process: at start-up every process must connect within
  it (a watchdog says which side is missing), and a process that sends no
  heartbeat for that long is declared dead by the coordinator, which stops
  the others. A peer that dies in the middle of a collective is noticed at
  once (gloo, the CPU collectives, reports the closed connection).
- The run's stderr goes through stderr_guard.py, which turns the runtime's
  abort into one line; `--verbose` leaves stderr untouched.
- A process that fails alone skips JAX's exit barrier (which would wait
  for the others, then abort): it prints its line and ends. Process 0 ends
  LEAD_GRACE seconds after the others could print theirs, because its exit
  takes the coordinator with it.
- All processes must see one workdir (check_shared_workdir): per-host
  workdirs would otherwise hang at the first checkpoint, where orbax waits
  for files that another host wrote into its own disk.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import inspect
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run import parallel

DEFAULT_PEER_TIMEOUT = 120  # seconds; JAX's own defaults are 300 (start) and 100 (heartbeat)
SHARED_WAIT = 10  # seconds a process looks for process 0's token (NFS and gcsfuse caches)
LEAD_GRACE = 2.0  # seconds process 0 lingers in a failing exit (see the module docstring)
SHARED_FILESYSTEMS = "a shared POSIX file system mounted at the same path on every host " \
                     "(NFS, Filestore, gcsfuse)"

_state = {"exit_code": None, "guard": None}


def _fail(message: str) -> errors.ConfigError:
  return errors.ConfigError(message)


def launch_settings(coordinator_address: str | None, num_processes: int | None,
                    process_id: int | None) -> tuple[str | None, int | None, int | None]:
  """The flags, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
  checked before anything connects; raises ConfigError (exit 2)."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  for name, value in (("num_processes", num_processes), ("process_id", process_id)):
    if value is None and os.environ.get(f"JAX_{name.upper()}"):
      try:
        value = int(os.environ[f"JAX_{name.upper()}"])
      except ValueError:
        raise _fail(f"JAX_{name.upper()}={os.environ[f'JAX_{name.upper()}']!r} is not an "
                    "integer") from None
      if name == "num_processes":
        num_processes = value
      else:
        process_id = value
  if coordinator_address is not None:
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise _fail(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT, the "
                  "address of process 0 and a free port on it, e.g. 10.0.0.2:8476")
  if num_processes is not None and num_processes < 1:
    raise _fail(f"--num_processes={num_processes}: expected 1 or more")
  if process_id is not None and (process_id < 0 or
                                 (num_processes is not None and process_id >= num_processes)):
    top = f"0..{num_processes - 1}" if num_processes else "0 or more"
    raise _fail(f"--process_id={process_id}: expected {top} (one distinct id per process)")
  return coordinator_address, num_processes, process_id


def _initialize_kwargs(peer_timeout: int) -> dict[str, int]:
  """The timeouts this jax accepts: the names exist since jax 0.4.3x, and an
  older or newer jax without one still starts, with its default."""
  wanted = {"initialization_timeout": peer_timeout + 30,  # the watchdog speaks first
            "heartbeat_timeout_seconds": peer_timeout,
            "shutdown_timeout_seconds": peer_timeout}
  try:
    accepted = inspect.signature(jax.distributed.initialize).parameters
  except (TypeError, ValueError):
    return {}
  return {k: v for k, v in wanted.items() if k in accepted}


def _start_guard(peer_timeout: int) -> None:
  """Points fd 2 at stderr_guard.py (see there); the guard writes to the old fd 2."""
  sys.stderr.flush()
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stderr_guard.py")
  old_stderr = os.dup(2)
  try:
    guard = subprocess.Popen([sys.executable, "-S", "-E", script, str(peer_timeout)],
                             stdin=subprocess.PIPE, stdout=old_stderr,
                             stderr=subprocess.DEVNULL, close_fds=True)
  except OSError:
    return  # the runtime's own abort text is worse, but not wrong
  finally:
    os.close(old_stderr)
  os.dup2(guard.stdin.fileno(), 2)
  guard.stdin.close()
  _state["guard"] = guard


def _watchdog(seconds: float, line: str) -> threading.Timer:
  """Ends the process with `line` unless cancelled within `seconds`."""
  def fire():
    _say_and_end(line, 1)
  timer = threading.Timer(seconds, fire)
  timer.daemon = True
  timer.start()
  return timer


def _say_and_end(line: str, code: int) -> None:
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  with contextlib.suppress(OSError):
    os.write(2, f"error: {line}\n".encode())
  os._exit(code)  # pylint: disable=protected-access


def start(coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, *, auto: bool = False,
          peer_timeout: int = DEFAULT_PEER_TIMEOUT, guard: bool = True) -> bool:
  """Starts jax.distributed when the launch asks for it; returns whether it did.

  Explicit flags or JAX_* variables win; `auto` (--multihost) lets JAX
  detect a TPU pod, a SLURM job or an MPI launch. A plain run calls nothing
  (JAX's initialize() raises where it detects no cluster) and only checks
  JAX_PLATFORMS when it is set, so that a refused run still ends before the
  backend starts.
  """
  if isinstance(peer_timeout, bool) or not isinstance(peer_timeout, int) or peer_timeout < 1:
    raise _fail(f"--peer_timeout={peer_timeout!r}: expected whole seconds >= 1")
  address, n, pid = launch_settings(coordinator_address, num_processes, process_id)
  explicit = address is not None or (n or 1) > 1
  if not (explicit or auto):
    if os.environ.get("JAX_PLATFORMS"):
      check_backend()
    return False
  if explicit and not auto and None in (address, n, pid):
    missing = [f"--{k}" for k, v in (("coordinator_address", address), ("num_processes", n),
                                     ("process_id", pid)) if v is None]
    raise _fail(f"a multi-process launch needs --coordinator_address, --num_processes and "
                f"--process_id (or their JAX_* variables); missing: {', '.join(missing)}")
  if guard:
    _start_guard(peer_timeout)
  who = f"process {pid} of {n}" if pid is not None and n else "this process"
  if pid == 0:
    late = (f"{who}: not every process connected to the coordinator at {address} within "
            f"--peer_timeout={peer_timeout} s; start all {n} processes with the same "
            "--coordinator_address and --num_processes and distinct --process_id, or "
            "raise --peer_timeout when hosts start minutes apart")
  else:
    late = (f"{who}: no answer from the coordinator{f' at {address}' if address else ''} "
            f"within --peer_timeout={peer_timeout} s; is process 0 running, and can this "
            "host reach its address and port?")
  timer = _watchdog(peer_timeout, late)
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid,
                               **_initialize_kwargs(peer_timeout))
  except ValueError as e:
    timer.cancel()
    if auto and "coordinator_address" in str(e):
      raise _fail("--multihost found no cluster to join here (JAX detects TPU pods, SLURM "
                  "jobs and MPI launches); elsewhere start every process with "
                  "--coordinator_address=HOST:PORT --num_processes=N --process_id=I") from None
    raise _fail(f"cannot start the multi-process run: {str(e).splitlines()[0]}") from None
  timer.cancel()
  atexit.register(_end_now)  # after JAX's own exit hook, so it runs first
  check_backend()
  return True


def check_backend() -> None:
  """The backend JAX_PLATFORMS names exists here, or one line (exit 2)."""
  try:
    jax.devices()
  except (RuntimeError, AssertionError, ValueError) as e:
    platforms = os.environ.get("JAX_PLATFORMS") or str(jax.config.jax_platforms or "")
    detail = str(e).strip().splitlines()[0] if str(e).strip() else "no such backend is installed"
    raise _fail(f"JAX_PLATFORMS={platforms!r}: JAX cannot start that backend here ({detail}); "
                "unset JAX_PLATFORMS to use what this host has, or install the jax build for "
                "it (requirements-cuda.txt, requirements-tpu.txt)") from None


_PEER_TEXT = re.compile(r"gloo|nccl|connection|socket|peer|unavailable|heartbeat|barrier",
                        re.IGNORECASE)


def _lost_peer(e: BaseException) -> bool:
  runtime_error = getattr(jax.errors, "JaxRuntimeError", None) or RuntimeError
  return isinstance(e, runtime_error) and bool(_PEER_TEXT.search(str(e)))


def ending(fn: Callable[[], Any]) -> Callable[[], Any]:
  """fn, such that a failure of a multi-process run ends this process without
  waiting for the others (module docstring); a lost peer becomes PeerLost.
  Wraps the entry point's whole run, start() included."""
  @functools.wraps(fn)
  def wrapped():
    try:
      return fn()
    except errors.UserError as e:
      _state["exit_code"] = e.exit_code
      raise
    except Exception as e:  # pylint: disable=broad-except
      _state["exit_code"] = 1
      if jax.distributed.is_initialized() and _lost_peer(e):
        first = str(e).strip().splitlines()[0][:200]
        raise errors.PeerLost(
            f"lost contact with the run's other processes ({first}): one of them ended or "
            "was killed, and its own log says why") from None
      raise
    except BaseException as e:
      code = e.code if isinstance(e, SystemExit) else 130
      _state["exit_code"] = code if isinstance(code, int) and code else 1
      raise
  return wrapped


def _end_now() -> None:
  """At interpreter exit after a failure: end at once (module docstring)."""
  code = _state["exit_code"]
  if code is None:
    return
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  if jax.process_index() == 0:
    time.sleep(LEAD_GRACE)
  os._exit(code)  # pylint: disable=protected-access


def check_shared_workdir(root: str) -> None:
  """Every process reads a token with a fresh nonce that process 0 wrote into
  `root`, or all of them raise the same WorkdirError (exit 2)."""
  if jax.process_count() == 1:
    return
  lead = jax.process_index() == 0
  nonce = np.frombuffer(secrets.token_hex(8).encode(), np.uint8) if lead else np.zeros(16, np.uint8)
  nonce = bytes(parallel.from_lead(nonce)).decode()
  path = os.path.join(root, f".shared_workdir_{nonce}")
  if lead:
    files.write_bytes(path, f"{nonce} {socket.gethostname()}\n".encode())
  parallel.sync("shared_workdir_token_written")
  seen = lead or _read_token(path, nonce)
  flags = parallel.gather(np.int32(seen)).reshape(-1)
  if lead:
    with contextlib.suppress(OSError):
      os.remove(path)
  missing = [i for i, f in enumerate(flags) if not f]
  if missing:
    raise errors.WorkdirError(
        f"--workdir {root} is not one directory shared by the run's {len(flags)} processes: "
        f"process {', '.join(map(str, missing))} cannot read what process 0 wrote there within "
        f"{SHARED_WAIT} s (a directory on each host's own disk?). A multi-host run needs its "
        f"workdir on {SHARED_FILESYSTEMS}")


def report_digest(report: Any) -> str:
  """First 12 hex digits of the report's canonical JSON (as written to report.json)."""
  text = json.dumps(files.to_json_value(report), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _read_token(path: str, nonce: str) -> bool:
  deadline = time.monotonic() + SHARED_WAIT
  while True:
    try:
      with open(path) as f:
        if f.read().split()[:1] == [nonce]:
          return True
    except (OSError, ValueError):
      pass
    if time.monotonic() > deadline:
      return False
    time.sleep(0.2)
