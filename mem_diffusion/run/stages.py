"""The one runner of train -> sample -> eval, for main.py and the sweep.

A stage is complete only when its outputs carry a record of what produced
them and that record matches what the current config would produce now:

- train: `train_summary.json` at `training.num_steps` (training itself
  resumes from the newest intact checkpoint otherwise);
- sample: `samples/record.json` = the model/diffusion config, every
  `sampling.*` key and the checkpoint step (or params file) sampled from;
- eval: `eval/record.json` = the samples' record, every `eval.*` key and the
  digest of the train-set manifest evaluated against.

Anything else is redone, and the run says so in one line: a changed
`sampling.num_samples`, a longer training run or a new `eval.*` key never
leaves an old report standing. Records are written after their outputs and
removed before a stage is redone, so a crash in between can only cause
extra work, never a stale result.

The workdir is bound to a config once a checkpoint exists: every mode then
refuses a config that changes what training computed (train/sample/eval
alike: sampling a cosine-trained model with a linear chain, or evaluating
against another train set, would be a silently wrong answer), and refuses a
workdir with checkpoints but no readable `config.json`. Before the first
checkpoint the record is not binding, so a failed start never locks a
workdir. The record also holds the environment training ran under; training
that resumes under other XLA flags, jax or device kind is refused unless
accepted (mem_diffusion/run/environment.py).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import ml_collections

from mem_diffusion import config as config_lib
from mem_diffusion import errors
from mem_diffusion.run import environment
from mem_diffusion.run import evaluate
from mem_diffusion.run import multihost
from mem_diffusion import files
from mem_diffusion.run import parallel
from mem_diffusion.run import sampling
from mem_diffusion.run import train
from mem_diffusion.run import workdir_lock
from mem_diffusion.run.workdir import Workdir

STAGES = ("train", "sample", "eval")


def _say(message: str) -> None:
  print(message, flush=True)


def _read_json(path: str) -> Any:
  """The parsed file, or None when absent; an unreadable file is a WorkdirError."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(f"{path} is unreadable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); "
                              "restore it or use a new --workdir") from None


def _write_json(path: str, obj: Any) -> None:
  files.write_json(path, obj)


def _is_lead() -> bool:
  return jax.process_index() == 0


def _canonical(obj: Any) -> Any:
  """JSON round trip, so tuples and lists (and key order) compare equal."""
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _differences(old: Any, new: Any, limit: int = 3) -> str:
  old_flat, new_flat = config_lib.flatten(old or {}), config_lib.flatten(new)
  keys = sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))
  shown = [f"{k}: {old_flat.get(k, '<absent>')!r} -> {new_flat.get(k, '<absent>')!r}"
           for k in keys[:limit]]
  return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


# ---------------------------------------------------------------------------
# The workdir's binding record (config.json).

def check_workdir_path(wd: Workdir) -> None:
  """A workdir that is a file, lies under a file or cannot be created: one line."""
  probe = wd.root
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if probe and not os.path.isdir(probe):
    raise errors.WorkdirError(f"--workdir {wd.root}: {probe} is a file, not a directory")
  try:
    os.makedirs(wd.root, exist_ok=True)
  except OSError as e:
    raise errors.WorkdirError(f"--workdir {wd.root} cannot be created ({e.strerror})") from None
  if not os.access(wd.root, os.W_OK | os.X_OK):
    raise errors.WorkdirError(f"--workdir {wd.root} is not writable")


def check_config_record(config: ml_collections.ConfigDict, wd: Workdir) -> None:
  """Refuses a config that does not match the run the workdir holds."""
  if not wd.has_checkpoints():
    return  # nothing trained yet: the record (if any) is not binding
  if not os.path.exists(wd.config_json):
    raise errors.WorkdirError(
        f"{wd.root} holds checkpoints but no config.json recording the config that "
        "made them; restore config.json or use a new --workdir")
  saved, _ = environment.split_record(_read_json(wd.config_json))
  safe = config_lib.guard_workdir_config(json.dumps(saved), config)
  if safe:
    _say(f"note: keys changed since this workdir was made (allowed): {', '.join(safe)}")


# ---------------------------------------------------------------------------
# What produced each stage's outputs.

def _trained_keys(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every key that changes what training computes (the guard's unsafe keys)."""
  return {k: v for k, v in config_lib.flatten(config).items()
          if not config_lib.is_safe_change(k)}


def _latest_checkpoint_step(wd: Workdir) -> int | None:
  try:
    steps = [int(n) for n in os.listdir(wd.checkpoints) if n.isdigit()]
  except (FileNotFoundError, NotADirectoryError):
    return None
  return max(steps) if steps else None


def _params_source(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, Any]:
  path = config.sampling.params_file
  if path:
    try:
      st = os.stat(path)
    except OSError as e:
      raise errors.InputError(f"sampling.params_file {path}: {e.strerror}") from None
    return {"params_file": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
  step = _latest_checkpoint_step(wd)
  if step is None:
    raise errors.WorkdirError(
        f"no checkpoint in {wd.checkpoints}: train first (--mode=train or --mode=all) "
        "or set --config.sampling.params_file to a converted params file")
  return {"checkpoint_step": step}


def sample_fingerprint(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, Any]:
  return _canonical({"trained": _trained_keys(config), "sampling": config.sampling.to_dict(),
                     "source": _params_source(config, wd)})


def eval_fingerprint(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, Any]:
  samples = _read_json(wd.samples_record) or {}
  manifest = None
  if os.path.exists(wd.train_manifest):
    with open(wd.train_manifest, "rb") as f:
      manifest = hashlib.sha256(f.read()).hexdigest()
  return _canonical({"samples": samples.get("fingerprint"), "eval": config.eval.to_dict(),
                     "train_manifest_sha256": manifest})


def _up_to_date(record_path: str, outputs: Sequence[str], fingerprint: dict[str, Any],
                what: str) -> bool:
  """Whether outputs exist and were made as the config says; says why not, once."""
  record = _read_json(record_path)
  present = [p for p in outputs if os.path.exists(p)]
  if record is not None and record.get("fingerprint") == fingerprint and len(present) == len(outputs):
    return True
  if record is not None:
    _say(f"{what}: made with other settings ({_differences(record.get('fingerprint'), fingerprint)}); "
         "redoing")
  elif present:
    _say(f"{what}: no record of what made {os.path.basename(present[0])}; redoing")
  return False


def is_complete(config: ml_collections.ConfigDict, workdir: str, stage: str) -> bool:
  """Whether `stage`'s outputs in `workdir` are what `config` would produce now."""
  wd = Workdir(workdir)
  if stage == "train":
    summary = _read_json(wd.train_summary) or {}
    return summary.get("step") == config.training.num_steps and wd.has_checkpoints()
  if stage == "sample":
    record_path, fingerprint = wd.samples_record, sample_fingerprint(config, wd)
    outputs = [wd.samples_npz(config.sampling.num_samples, config.data.image_size)]
  elif stage == "eval":
    record_path, fingerprint, outputs = wd.eval_record, eval_fingerprint(config, wd), [
        wd.report_json]
  else:
    raise errors.ConfigError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
  record = _read_json(record_path) or {}
  return record.get("fingerprint") == fingerprint and all(map(os.path.exists, outputs))


def _remove(paths: Sequence[str]) -> None:
  if not _is_lead():
    return
  for path in paths:
    if os.path.exists(path):
      os.remove(path)


# ---------------------------------------------------------------------------
# The stages.

def _train(config: ml_collections.ConfigDict, wd: Workdir,
           accept_environment: bool | None = None) -> None:
  if is_complete(config, wd.root, "train"):
    _say(f"train: complete at step {config.training.num_steps} (skipped)")
    return
  if wd.has_checkpoints():  # resuming: the numerics must be the checkpoints'
    _, recorded = environment.split_record(_read_json(wd.config_json))
    note = environment.check_resume(recorded, environment.facts(), accept=accept_environment)
    if note:
      _say(note)
  train.train_and_evaluate(config, wd.root)


def _sample(config: ml_collections.ConfigDict, wd: Workdir) -> None:
  fingerprint = sample_fingerprint(config, wd)
  npz = wd.samples_npz(config.sampling.num_samples, config.data.image_size)
  if _up_to_date(wd.samples_record, [npz], fingerprint, "samples"):
    _say(f"sample: {os.path.relpath(npz)} is up to date (skipped)")
    return
  _remove([wd.samples_record, wd.eval_record]
          + glob.glob(os.path.join(wd.samples_dir, "samples_*.npz")))
  sampling.sample_to_workdir(config, wd.root)
  if _is_lead():
    _write_json(wd.samples_record, {"stage": "sample", "fingerprint": fingerprint})
  parallel.sync("samples_recorded")  # the others read the record next


def _eval(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, Any]:
  npz = wd.samples_npz(config.sampling.num_samples, config.data.image_size)
  if not os.path.exists(npz) or _read_json(wd.samples_record) is None:
    raise errors.WorkdirError(f"no finished samples at {npz}: run --mode=sample "
                              "(or --mode=all) first")
  fingerprint = eval_fingerprint(config, wd)
  if _up_to_date(wd.eval_record, [wd.report_json], fingerprint, "eval"):
    _say(f"eval: {os.path.relpath(wd.report_json)} is up to date (skipped)")
    return _read_json(wd.report_json)
  _remove([wd.eval_record])
  report = parallel.lead_only(  # one writer of the report and figures
      lambda: evaluate.evaluate_workdir(config, wd.root),
      lambda: _read_json(wd.report_json))
  if _is_lead():
    _write_json(wd.eval_record, {"stage": "eval", "fingerprint": fingerprint})
  return report


def run(config: ml_collections.ConfigDict, workdir: str,
        stages: Sequence[str] = STAGES, *, validate: bool = True,
        summary: Callable[[dict[str, Any], Workdir], None] | None = None,
        accept_environment: bool | None = None) -> dict[str, Any] | None:
  """Runs `stages` in order in `workdir`, skipping complete ones; returns the report.

  Raises errors.UserError (with its exit code) for every documented failure.
  `validate=False` is for callers that validated the config already (the
  sweep checks every config before the first run starts).
  `accept_environment` lets training resume under other XLA flags, jax or
  device kind (None: MEM_DIFFUSION_ACCEPT_ENVIRONMENT; environment.py).
  """
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise errors.ConfigError(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
  if validate:  # before the lock: a bad config must not wait for another run
    config_lib.validate_config(config)
  wd = Workdir(workdir)
  check_workdir_path(wd)
  multihost.check_shared_workdir(wd.root)
  report = None
  with workdir_lock.hold_for_run(wd.root):
    check_config_record(config, wd)
    for stage in stages:
      if stage == "train":
        _train(config, wd, accept_environment)
      elif stage == "sample":
        _sample(config, wd)
      else:
        report = _eval(config, wd)
  if report is not None and summary is not None:
    summary(report, wd)
  return report


# ---------------------------------------------------------------------------
# The answer, printed plainly at the end of a run.

def _fmt(value: Any, digits: int = 3) -> str:
  return "-" if not isinstance(value, (int, float)) or value != value else f"{value:.{digits}f}"


def summary_lines(report: dict[str, Any], wd: Workdir) -> list[str]:
  """The few numbers a researcher reads first, and where the rest is."""
  n = report.get("num_samples")
  ci = report.get("replicate_ci95") or [None, None]
  lines = [f"== result: {os.path.relpath(wd.root)} ==",
           f"replicate ratio      {_fmt(report.get('replicate_ratio'))}  "
           f"({report.get('num_replicates', '-')}/{n} samples with d1/d2 < "
           f"{_fmt(report.get('threshold'), 3)}; 95% CI {_fmt(ci[0])}-{_fmt(ci[1])})"]
  if report.get("num_duplicate_train_pairs"):
    dci = report.get("replicate_ci95_dedup") or [None, None]
    lines.append(f"  duplicates merged  {_fmt(report.get('replicate_ratio_dedup'))}  "
                 f"({report['num_duplicate_train_pairs']} duplicate training pairs; "
                 f"95% CI {_fmt(dci[0])}-{_fmt(dci[1])})")
  lines.append(f"blend ratio          {_fmt(report.get('blend_ratio'))}")
  quality = report.get("quality") or {}
  if "unavailable" in quality:
    lines.append(f"quality              - ({quality['unavailable']})")
  else:
    d1 = quality.get("d1") or {}
    kid = (quality.get("features") or {}).get("kid")
    lines.append(f"quality              median d1 / held-out {_fmt(d1.get('median_ratio'), 2)}"
                 f" (1 = as far from the train set as new real images); KID {_fmt(kid)}")
  peak = report.get("over_training") or {}
  if peak:
    lines.append(f"over training        max {_fmt(peak.get('max_replicate_ratio'))} at step "
                 f"{peak.get('max_step')} ({peak.get('num_points')} points; "
                 f"{os.path.relpath(wd.over_training_png)})")
  pictures = [p for p in (wd.nearest_neighbors_png, wd.ratio_hist_png, wd.distance_cdf_png)
              if os.path.exists(p)]
  lines.append(f"report               {os.path.relpath(wd.report_json)}")
  if pictures:
    lines.append(f"pictures             {', '.join(os.path.relpath(p) for p in pictures)}")
  return lines


def print_summary(report: dict[str, Any], wd: Workdir) -> None:
  if _is_lead():
    print("\n".join(summary_lines(report, wd)), file=sys.stdout, flush=True)
  else:  # one line per host, so a pod's logs show each process ended on the same answer
    print(f"process {jax.process_index()} of {jax.process_count()}: done; process 0 wrote "
          f"the outputs (report sha256 {multihost.report_digest(report)})", flush=True)
