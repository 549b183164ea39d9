"""What every command-line entry point shares: flag errors, exit codes, names.

The contract with a user: a documented failure is one `error: ...` line on
stderr and an exit code (errors.UserError carries it); only a bug shows a
traceback. Keeping that in one place means main.py, the sweep and the CLIs
cannot drift apart on it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import flags

from mem_diffusion import errors
from mem_diffusion.run import cpu_tuning
from mem_diffusion.run import runtime


def fail(message: str, code: int = 2) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def call(fn: Callable[[], Any]) -> Any:
  """Runs `fn`; a UserError becomes its one line and exit code."""
  try:
    return fn()
  except errors.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except errors.UserError as e:
    # One `error:` line; a message that lists remedies (the offline routes to
    # CIFAR-10) keeps them below it, indented, instead of losing them.
    lines = str(e).strip().splitlines() or [type(e).__name__]
    rest = "".join(f"\n  {l}" if l.strip() else "" for l in lines[1:])
    fail(lines[0] + rest, e.exit_code)


def prepare_process(xla_cpu_tuning: bool | None, huge_pages: bool | None = None, *,
                    restart: bool = True) -> dict[str, str]:
  """What an entry point sets for its own process, first thing in main():
  the CPU tuning (`--xla_cpu_tuning`, `--huge_pages`; cpu_tuning.apply, which
  says what it sets and may restart the process once, or with `restart`
  False sets the huge pages only for the processes this one starts) and
  TensorFlow's quiet defaults. Returns what the tuning set."""
  try:
    tuned = cpu_tuning.apply(xla_cpu_tuning=xla_cpu_tuning, huge_pages=huge_pages,
                             restart=restart, say=lambda line: print(line, flush=True))
  except ValueError as e:
    fail(str(e))
  runtime.quiet_tensorflow()
  return tuned


class Exit(SystemExit):
  """What an argparse CLI's main() raises for a documented failure. A caller
  reads the message in `code`, as from SystemExit(message); `run` prints it
  as the `error:` line and exits with `status` (2: the input, 1: the run)."""

  def __init__(self, message: str, status: int = 2):
    super().__init__(message)
    self.status = status


def run(main: Callable[[], Any]) -> NoReturn:
  """An argparse CLI's main(): its int is the exit status, and a SystemExit
  with a message is one `error:` line (exit 1 unless it names a status)."""
  try:
    status = main()
  except SystemExit as e:
    if isinstance(e.code, str):
      fail(e.code, getattr(e, "status", 1))
    raise
  sys.exit(status or 0)


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the CLIs that use it, with their usage mistakes worded as the
  absl ones are: one `error:` line, exit 2 (argparse prints its usage first)."""

  def error(self, message: str) -> NoReturn:
    fail(f"{message} (usage: {self.prog} --help)")


def _config_file_arguments(argv: Sequence[str]) -> list[str]:
  """The values given to ml_collections config-file flags (`--config=FILE[:arg]`)."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  file_parser = config_flags.ConfigFileFlagParser
  names = [n for n in flags.FLAGS if isinstance(getattr(flags.FLAGS[n], "parser", None), file_parser)]
  found = []
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    for name in names:
      for prefix in (f"--{name}=", f"-{name}="):
        if arg.startswith(prefix):
          found.append(arg[len(prefix):])
      if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
        found.append(argv[i + 1])
  return found


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parser, but a bad flag or config override is one `error:` line.

  A config file is loaded first by config.load_config, whose refusals name
  the cause: ml_collections' own loader shows a file that raises, returns no
  config or is not Python as a traceback, and one without get_config() (or
  /dev/null) as an unknown config key.
  """
  from mem_diffusion import config as config_lib  # pylint: disable=g-import-not-at-top
  for spec in _config_file_arguments(argv):
    try:
      config_lib.load_config(spec)
    except errors.ConfigError as e:
      fail(str(e))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raises is reported with its traceback inside the
    # message: its last line is the exception itself.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    fail(lines[-1] if "Traceback" in str(e) else lines[0])
  except (KeyError, AttributeError) as e:
    # ml_collections: an override `--config.a.b=v` of a key that does not exist.
    name = str(e.args[0] if e.args else e).strip("'\"")
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.")
           and name in a.split("=")[0].split(".")]
    fail(f"unknown config key '{name}'" + (f" in {bad[0]}" if bad else ""))
  except (ValueError, TypeError) as e:
    fail(f"bad config override: {e}".splitlines()[0])


def loaded_config(flag_name: str = "config"):
  """The parsed config of an ml_collections config flag, or one error line.

  ml_collections defers "file not found" and errors inside get_config() to
  the first use of the value; this is that first use.
  """
  try:
    config = flags.FLAGS[flag_name].value
    if config is not None:
      config.to_dict()
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    fail(f"cannot load the config file: {lines[-1]}")
  if config is None:
    fail(f"--{flag_name} is required, e.g. --{flag_name}=configs/quickstart.py")
  return config


def default_workdir(config_spec: str, root: str = "runs") -> str:
  """runs/<config file name>[_<argument>]: one workdir per config variant.

  'configs/capacity.py:1000,tiny' -> 'runs/capacity_1000_tiny', so ':tiny'
  and config arguments never share a workdir with the full run.
  """
  path, _, arg = config_spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + re.sub(r"[^A-Za-z0-9.-]+", "_", arg.replace("=", "-")).strip("_")
  return os.path.join(root, name)
