"""The errors a user can cause or meet, each carrying its process exit code.

Entry points (main.py, the sweep, the CLIs) catch `UserError` once and print
`error: <message>` on one line with `exit_code`; anything else is a bug and
keeps its traceback. The codes follow the shell's conventions:

- 2: the command, a config value or an input file is wrong (fix and rerun);
- 1: the run itself failed (a corrupt checkpoint, divergence, a full disk);
- 128 + signal: preempted; the state was saved, rerunning resumes.

Every class also derives from the builtin its callers caught before this
module existed (ValueError, FileNotFoundError, RuntimeError), so `except
ValueError` around a config check keeps working.
"""

from __future__ import annotations


class UserError(Exception):
  """Base of every documented failure: one line for the user, no traceback."""

  exit_code = 2


class ConfigError(UserError, ValueError):
  """A config value, or a config/workdir combination, that cannot be run."""


class InputError(UserError, ValueError):
  """A file given on the command line or in a config is unusable."""


class DataUnavailableError(UserError, FileNotFoundError):
  """A dataset is not prepared and cannot be fetched here."""


class WorkdirError(UserError, RuntimeError):
  """The workdir is in use, or holds outputs of another config."""


class RunFailedError(UserError, RuntimeError):
  """The computation started and could not finish (exit 1)."""

  exit_code = 1


class CheckpointCorruptError(RunFailedError):
  """No checkpoint in the workdir restores intact."""


class TrainingDivergedError(RunFailedError):
  """The loss or gradient norm became NaN/inf; nothing after it was saved."""


class OutputError(RunFailedError, OSError):
  """An output could not be written (disk full, unwritable path)."""


class LeadFailed(UserError):
  """Process 0 failed in work it does for all processes; the others say so
  with its message and exit code."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(f"process 0: {message}")
    self.exit_code = exit_code


class PeerLost(RunFailedError):
  """Another process of a multi-process run ended or stopped answering."""


class Preempted(UserError):
  """SIGTERM/SIGINT: the current step was saved, the run can be resumed."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"stopped by signal {signum} at step {step}; the "
                     "checkpoint is saved, rerun the same command to resume")
    self.step, self.signum = step, signum

  @property
  def exit_code(self) -> int:  # type: ignore[override]
    return 128 + self.signum
