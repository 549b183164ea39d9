"""A multi-process run's stderr filter: JAX's runtime abort becomes one line.

When a process of a jax.distributed run dies, the others are stopped by
the runtime itself, in C++: a fatal log record ("Terminating process
because the JAX distributed service detected fatal errors"), a stack trace
and an abort, preceded by error records of the coordination service. Python
never sees it, so it cannot be caught; it can only be read. multihost.py
starts this script as a separate process and points the run's stderr at
it. It passes every line through except the runtime's own records, and at
the abort prints one `error:` line that
says what happened, unless the run already printed its own `error:` line.

It is a separate process because the abort ends the run before a thread of
its could write anything. It ignores SIGINT and SIGTERM (a Ctrl-C reaches
the whole process group, and the run's "preempted" line must still pass)
and ends when the run's last copy of the pipe closes.

Standard library only, run as a script: it must start in milliseconds and
must not import the package (or JAX).

Usage: python stderr_guard.py PEER_TIMEOUT_SECONDS
"""

import re
import signal
import sys

GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^:\]]+):\d+\] ")
# Sources of the records the abort explains; seen alone they are noise too.
RUNTIME_SOURCES = ("coordination_service", "preemption_sync_manager", "client.h",
                   "distributed_runtime", "client.cc")
FATAL = "Terminating process because the JAX distributed service detected fatal errors"
STACK = "*** Check failure stack trace: ***"
# Lines that begin a new message of the run's own, ending a dropped record.
OWN = ("error:", "preempted:", "note:", "Traceback", "warning:")


def reason(text: str, peer_timeout: str) -> str:
  """What the runtime's records say happened, in a few words."""
  if "stopped sending heartbeats" in text:
    tail = text.split("stopped sending heartbeats", 1)[1]
    ids = list(dict.fromkeys(re.findall(r"^\s*(\d+)\s*$", tail, re.M)))
    who = f"process {', '.join(ids)}" if ids else "a process"
    return f"{who} stopped answering for {peer_timeout} s"
  if "RegisterTask" in text:
    return f"not every process connected within {peer_timeout} s"
  if "Shutdown barrier" in text:
    return f"a process did not reach the end of the run within {peer_timeout} s"
  if any(s in text for s in ("Socket closed", "Connection refused", "failed to connect",
                             "UNAVAILABLE")):
    return "the coordinator (process 0) is gone"
  status = text.split("absl::Status:", 1)[-1].strip().splitlines()
  return (status[0][:160] if status else "unknown reason")


def message(text: str, peer_timeout: str) -> str:
  return (f"error: lost contact with the run's other processes ({reason(text, peer_timeout)}): "
          "one of them ended, was killed or hangs, and its own log says why; JAX's "
          "distributed runtime stopped this one too\n")


def main() -> None:
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
  peer_timeout = sys.argv[1] if len(sys.argv) > 1 else "?"
  source, sink = sys.stdin.buffer, sys.stdout.buffer
  dropping = aborting = said = own_error = False
  seen: list[str] = []
  for raw in iter(source.readline, b""):
    line = raw.decode(errors="replace")
    if aborting:
      seen.append(line)
      if STACK in line and not said:
        said = True
        if not own_error:
          sink.write(message("".join(seen), peer_timeout).encode())
          sink.flush()
      continue
    m = GLOG.match(line)
    if m:
      if FATAL in line:
        aborting = True
        seen.append(line)
        continue
      dropping = any(s in m.group(1) for s in RUNTIME_SOURCES)
      if dropping:
        seen.append(line)
        continue
    elif dropping and not line.startswith(OWN):
      seen.append(line)  # a continuation line of a dropped record
      continue
    else:
      dropping = False
    own_error = own_error or line.startswith("error:")
    sink.write(raw)
    sink.flush()
  if aborting and not said and not own_error:
    sink.write(message("".join(seen), peer_timeout).encode())
    sink.flush()


if __name__ == "__main__":
  main()
