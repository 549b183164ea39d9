"""A sweep's root belongs to one sweep at a time, and its summary to every run in it.

Two sweeps on one `--root` at once would each rewrite summary.csv/json/md
from the runs they know, so the last writer's runs silently replace the
other's; a capacity search and a sweep would do the same to capacity.png.
The root is therefore held with the same kind of kernel lock as a run's
workdir (run/workdir_lock.py: released when the holder dies, however it
dies), on `<root>/.sweep.lock`, by the sweep's own process for as long as
it runs; its workers (--jobs > 1) and SLURM tasks lock only their runs.

The summary is rebuilt from disk, not from the runs of this invocation:
when a run finishes, the sweep files its row in `<workdir>/sweep_row.json`
with the SHA-256 of the `eval/report.json` it was made from, and the
summary takes every row under the root whose report is still that report
(a run being redone, or changed by hand since, drops out until it finishes
again; runs finished before these files existed join when a sweep names
them again).

A plan is refused before anything runs where two of its runs would share a
workdir (the same config and seed twice: the second would find the first's
lock and be counted as failed) or where a config's name would put a run
outside the root or onto one of the root's own files.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from typing import Any, Iterator, Sequence

from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run import workdir_lock

LOCK_NAME = ".sweep.lock"
ROW_FILE = "sweep_row.json"
# What the sweep, the capacity search and the cluster keep in the root itself:
# two folders, then files.
ROOT_ENTRIES = ("jax_cache", "slurm", "summary.csv", "summary.json", "summary.md",
                "capacity.json", "capacity.png", "seed_figure.png", "dummies_fill.png")


def _in_use(folder: str, holder: str) -> str:
  return (f"--root {folder} is in use by another sweep or capacity search{holder}; wait "
          "for it to finish, stop it, or use another --root")


def check_root(root: str) -> str:
  """The root as an absolute path, or one line on why it cannot hold runs."""
  path = os.path.abspath(root)
  probe = path
  while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise errors.WorkdirError(f"--root {root}: {probe} is "
                              + ("a broken link" if os.path.islink(probe) else "a file")
                              + ", not a directory")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.WorkdirError(f"--root {root} cannot be created ({e.strerror})") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise errors.WorkdirError(f"--root {root} is not writable")
  for name in ROOT_ENTRIES[2:]:  # the files: a folder there would fail after the first run
    if os.path.isdir(os.path.join(path, name)):
      raise errors.WorkdirError(f"{os.path.join(path, name)} is a directory where the sweep "
                                "writes a file; move it away or use another --root")
  return path


@contextlib.contextmanager
def hold(root: str) -> Iterator[None]:
  """Holds the root for this sweep (WorkdirLocked, exit 2, when another has it)."""
  with workdir_lock.hold(check_root(root), name=LOCK_NAME, in_use=_in_use):
    yield


def check_name(name: str) -> None:
  """A config's name is the folder of its runs directly under the root."""
  if (not name or name in (".", "..") or name.startswith(".") or "/" in name
      or "\0" in name or (os.altsep and os.altsep in name)):
    raise errors.ConfigError(f"name={name!r}: a sweep puts each run in <root>/<name>/seed<k>, "
                             "so the name must be one folder name (no '/', not starting "
                             "with '.')")
  if name in ROOT_ENTRIES:
    raise errors.ConfigError(f"name={name!r} is one of the sweep root's own entries "
                             f"({', '.join(ROOT_ENTRIES)}); rename the config")


def check_plan(plan: Sequence[tuple[str, int, Any, str]]) -> None:
  """Each run of the plan in a workdir of its own."""
  seen: dict[str, tuple[str, int]] = {}
  for spec, seed, _, workdir in plan:
    key = os.path.abspath(workdir)
    if key in seen:
      raise errors.ConfigError(
          f"{spec!r} seed {seed} is given twice (as {seen[key][0]!r} seed {seen[key][1]}; "
          "--configs or --seeds repeats it): each run would be started twice in one workdir")
    seen[key] = (spec, seed)


def _digest(path: str) -> str | None:
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


def save_row(workdir: str, row: dict[str, Any]) -> None:
  """Files a finished run's row beside the report it was made from."""
  report = os.path.join(workdir, "eval", "report.json")
  files.write_json(os.path.join(workdir, ROW_FILE), {"report_sha256": _digest(report),
                                                     "row": row})


def finished_rows(root: str, first: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Every filed row under the root whose report is unchanged: the runs of
  `first` (workdirs) in that order, then the others by name and seed."""
  order = {os.path.abspath(w): i for i, w in enumerate(first)}
  found = []
  for path in glob.glob(os.path.join(glob.escape(os.path.abspath(root)), "*", "seed*", ROW_FILE)):
    workdir = os.path.dirname(path)
    try:
      with open(path) as f:
        record = json.load(f)
      row = dict(record["row"])
    except (OSError, ValueError, KeyError, TypeError):
      continue  # a damaged row file: that run joins again when a sweep reruns it
    if not os.path.exists(os.path.join(workdir, "eval", "record.json")):
      continue  # being evaluated again
    if record.get("report_sha256") != _digest(os.path.join(workdir, "eval", "report.json")):
      continue
    row["workdir"] = workdir  # where it is now, should the root have moved
    seed = row.get("seed")
    found.append(((order.get(workdir, len(order)), str(row.get("name")),
                   seed if isinstance(seed, int) else -1), row))
  return [row for _, row in sorted(found, key=lambda item: item[0])]
