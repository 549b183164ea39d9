"""Preemption: a TPU VM announces it with SIGTERM, a user with Ctrl-C.

The training loop catches both for the length of a run, finishes the step in
progress, saves a checkpoint and only then stops (errors.Preempted, exit code
128 + signal), so a preempted run loses no finished step.
"""

from __future__ import annotations

import signal

from absl import logging


class SignalCatcher:
  """Records SIGTERM/SIGINT instead of dying, so the loop can save first."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # a second signal: give up at once
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("signal %d received: saving at the end of this step", signum)

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
