"""What each output was made from, checked before the output is reused.

Names and times cannot tell a stale output from a good one: a sample file
copied over another, a truncated one and a checkpoint folder of another run
all keep their names. So every record holds digests of its inputs and its
output, and a stage reuses an output only when every digest still matches:

- samples/record.json: the keys that change the samples (every key training
  depends on, every sampling.* key), the params (the checkpoint's step and
  the SHA-256 of its EMA params, or the params file's SHA-256 and size) and
  the samples file's SHA-256 and size;
- eval/record.json: the samples' record and file digest, every eval.* key,
  the train-set manifest's SHA-256, what the report says about training
  (step S of N, the over-training summary) and report.json's digest;
- eval/over_training.json: the keys its points depend on and the run id;
  each point carries the SHA-256 of the EMA params it scored.

A checkpoint's EMA digest is computed by training when it saves and kept in
the checkpoint's meta item (tied to the arrays by the checksum every restore
verifies), not recomputed by restoring: the sweep asks whether runs are
complete in a parent process that must not start a JAX backend, and
restoring a UNet-128 state costs seconds. The run id, in `config.json` and
in every checkpoint's meta, tells this run's checkpoints from another run's
copied in under the same step; `config.json`'s marker tells the project's
config record from a user's file of the same name.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import ml_collections

from mem_diffusion import config as config_lib
from mem_diffusion import config_guard
from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run.workdir import Workdir

MARKER_KEY = "mem_diffusion"


def read_json(path: str) -> Any:
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


def canonical(obj: Any) -> Any:
  """JSON round trip, so tuples and lists (and key order) compare equal."""
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _short(value: Any) -> str:
  if isinstance(value, str) and len(value) > 24:
    return repr(value[:12] + "...")
  return repr(value)


def differences(old: Any, new: Any, limit: int = 3) -> str:
  """'key: old -> new; ...' for the flattened keys that differ (digests shortened)."""
  old_flat = config_lib.flatten(old) if isinstance(old, dict) else {}
  new_flat = config_lib.flatten(new)
  keys = sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))
  if not keys:
    return "a record of another format"
  shown = [f"{k}: {_short(old_flat.get(k, '<absent>'))} -> {_short(new_flat.get(k, '<absent>'))}"
           for k in keys[:limit]]
  return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def file_digest(path: str, name: str | None = None) -> dict[str, Any] | None:
  """{'bytes', 'sha256'} of a regular file, None when absent.

  Within the input budget, so that a huge (sparse) file is refused at once
  instead of being read for hours; a device or FIFO is never read.
  """
  if not os.path.lexists(path):
    return None
  h, size = hashlib.sha256(), 0
  with files.open_input(path, name) as f:
    files.check_budget(os.fstat(f.fileno()).st_size, name or path, "the file's size")
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
      size += len(block)
  return {"bytes": size, "sha256": h.hexdigest()}


def _rel(wd: Workdir, path: str) -> str:
  return os.path.relpath(path, wd.root)


def output_record(wd: Workdir, path: str) -> dict[str, Any]:
  return {"file": _rel(wd, path), **file_digest(path)}


# ---------------------------------------------------------------------------
# Whose workdir and whose checkpoints.

def run_id(wd: Workdir) -> str | None:
  saved = read_json(wd.config_json)
  marker = saved.get(MARKER_KEY) if isinstance(saved, dict) else None
  return marker.get("run_id") if isinstance(marker, dict) else None


def marker_entry(workdir: str) -> dict[str, Any]:
  """config.json's mark: the project wrote the file, and which run it records.

  The run id is made once, at the first start, and kept across restarts.
  """
  try:
    rid = run_id(Workdir(workdir))
  except errors.WorkdirError:
    rid = None
  return {MARKER_KEY: {"run_id": rid or uuid.uuid4().hex}}


def without_marker(saved: Any) -> Any:
  return {k: v for k, v in saved.items() if k != MARKER_KEY} if isinstance(saved, dict) else saved


def check_owner(wd: Workdir) -> None:
  """Refuses a workdir whose config.json the project did not write.

  Training replaces config.json; a user's own file of that name (say, the
  experiment's settings kept next to its results) must not be overwritten.
  A workdir with checkpoints and an unmarked config.json is an older run
  of this project, whose config.json binds as before.
  """
  if not os.path.lexists(wd.config_json) or wd.has_checkpoints():
    return
  try:
    marked = run_id(wd) is not None
  except errors.WorkdirError:
    marked = False
  if not marked:
    raise errors.WorkdirError(
        f"{wd.config_json} was not written by mem_diffusion (no '{MARKER_KEY}' record "
        "in it) and training would replace it: move it away or use another --workdir")


def checkpoint_steps(wd: Workdir) -> list[int]:
  """The committed checkpoints' steps (orbax renames a folder to its step when done)."""
  try:
    names = os.listdir(wd.checkpoints)
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(int(n) for n in names if n.isdigit())


def latest_step(wd: Workdir) -> int | None:
  steps = checkpoint_steps(wd)
  return steps[-1] if steps else None


def checkpoint_meta(wd: Workdir, step: int) -> dict[str, Any]:
  """The checkpoint's meta item (step, run id, EMA digest), {} when unreadable."""
  try:
    with open(os.path.join(wd.checkpoints, str(step), "meta", "metadata")) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return {}
  return meta if isinstance(meta, dict) else {}


def check_checkpoints_are_this_runs(wd: Workdir) -> None:
  """Refuses checkpoints whose meta names another run than config.json does.

  Another run's checkpoint restores without error (same shapes, its own
  checksum intact), so training would resume another trajectory and
  sampling would report another model as this run's step.
  """
  own = run_id(wd)
  if own is None:
    return  # a run older than run ids: nothing to compare
  for step in checkpoint_steps(wd):
    theirs = checkpoint_meta(wd, step).get("run_id")
    if theirs is not None and theirs != own:
      raise errors.WorkdirError(
          f"checkpoint {step} in {wd.checkpoints} was made by another run (run id "
          f"{theirs[:12]}, this workdir's is {own[:12]}); remove it (training redoes its "
          "steps) or use a new --workdir")


# ---------------------------------------------------------------------------
# Training's position: the answer is the config's, step N of training.num_steps.

def check_not_past(config: ml_collections.ConfigDict, wd: Workdir) -> None:
  """Refuses a config that asks for fewer steps than the checkpoints hold."""
  step, num_steps = latest_step(wd), int(config.training.num_steps)
  if step is not None and step > num_steps:
    raise errors.ConfigError(past_message(num_steps, step, wd.checkpoints))


def past_message(num_steps: int, step: int, where: str) -> str:
  return (f"training.num_steps={num_steps}, but this workdir's training reached step {step} "
          f"({where}): a longer run cannot answer for a shorter one; set "
          f"training.num_steps={step}, or use a new --workdir to train {num_steps} steps")


def unfinished_note(step: int, num_steps: int) -> str:
  return f"unfinished: step {step} of {num_steps}"


def refuse_unfinished(step: int, num_steps: int, what: str) -> None:
  raise errors.WorkdirError(
      f"training is unfinished (step {step} of {num_steps}): finish it with --mode=train "
      f"(or --mode=all), or pass --allow_unfinished to {what} the step-{step} model")


# ---------------------------------------------------------------------------
# Fingerprints.

def trained_keys(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every key that changes what training computes (the guard's unsafe keys)."""
  return {k: v for k, v in config_lib.flatten(config).items()
          if not config_guard.is_safe_change(k)}


def params_source(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, Any]:
  """What sampling would sample from now, by content."""
  path = config.sampling.params_file
  if path:
    digest = file_digest(path, f"sampling.params_file {path!r}")
    if digest is None:
      raise errors.InputError(f"sampling.params_file {path!r}: not found (no such file)")
    return {"params_file": os.path.abspath(path), **digest}
  step = latest_step(wd)
  if step is None:
    raise errors.WorkdirError(
        f"no checkpoint in {wd.checkpoints}: train first (--mode=train or --mode=all) "
        "or set --config.sampling.params_file to a converted params file")
  meta = checkpoint_meta(wd, step)
  # Checkpoints saved before the EMA digest existed: the whole state's checksum.
  key = "ema_sha256" if "ema_sha256" in meta else "state_checksum"
  return {"checkpoint_step": step, key: meta.get(key)}


def sample_fingerprint(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, Any]:
  source = params_source(config, wd)
  fingerprint = {"trained": trained_keys(config), "sampling": config.sampling.to_dict(),
                 "source": source}
  step, num_steps = source.get("checkpoint_step"), int(config.training.num_steps)
  if step is not None and step < num_steps:  # the grid says "step S of N"
    fingerprint["training"] = unfinished_note(step, num_steps)
  return canonical(fingerprint)


def curve_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keys an over-training point depends on besides the trained ones."""
  keys = ["eval.every_steps", "eval.every_num_samples", "eval.every_respacing",
          "eval.ratio_threshold", "eval.num_heldout", "sampling.seed",
          "sampling.clip_denoised", "sampling.label"]
  if config.eval.every_respacing.startswith("ddim"):
    keys.append("sampling.eta")
  return canonical({k: config[k.split(".")[0]][k.split(".")[1]] for k in keys})


def curve_changes(curve: Any, config: ml_collections.ConfigDict, own_run: str | None
                  ) -> str | None:
  """Why a stored curve's points are not this config's ('was ...'), or None."""
  points = curve.get("points") if isinstance(curve, dict) else None
  if not isinstance(points, list) or not all(
      isinstance(p, dict) and isinstance(p.get("step"), int) for p in points):
    return "damaged"
  settings = curve_settings(config)
  if curve.get("settings") != settings:
    return f"made with other settings ({differences(curve.get('settings'), settings)})"
  if own_run is not None and curve.get("run_id") != own_run:
    return "made by another run"
  return None


def reportable_curve(config: ml_collections.ConfigDict, wd: Workdir, step: int | None
                     ) -> tuple[list[dict[str, Any]] | None, str | None]:
  """(the points the report may carry, or None; why a stored curve is left out).

  A report carries a curve only if this config would make exactly that curve:
  its settings, this run, a point at every eval.every_steps up to the step
  sampled, each from the params of the kept checkpoint at its step, if any.
  """
  path, every = wd.over_training_json, int(config.eval.every_steps)
  try:
    curve = read_json(path)
  except errors.WorkdirError:
    curve = "damaged"
  rel = _rel(wd, path)
  if curve is None:
    if every > 0 and step is not None and step >= every:
      return None, f"no over-training curve ({rel} is missing)"
    return None, None
  if step is None:
    return None, f"{rel} is left out of the report: the samples are not of this workdir's training"
  why = curve_changes(curve, config, run_id(wd))
  if why:
    return None, f"{rel} is left out of the report: it was {why}"
  points = curve["points"]
  have, want = [p["step"] for p in points], list(range(every, step + 1, every))
  if have != want:
    missing = sorted(set(want) - set(have))
    return None, (f"{rel} is left out of the report: no point at step(s) "
                  f"{', '.join(map(str, missing[:5]))}" if missing else
                  f"{rel} is left out of the report: it has points past step {step}")
  for p in points:
    kept = checkpoint_meta(wd, p["step"]).get("ema_sha256")
    if kept is not None and p.get("ema_sha256") != kept:
      return None, (f"{rel} is left out of the report: its step-{p['step']} point scored "
                    "other params than checkpoint " + str(p["step"]))
  return points, None


def eval_fingerprint(config: ml_collections.ConfigDict, wd: Workdir, samples: dict[str, Any],
                     context: dict[str, Any]) -> dict[str, Any]:
  manifest = file_digest(wd.train_manifest)
  return canonical({"samples": samples.get("fingerprint"),
                    "samples_file": {k: (samples.get("output") or {}).get(k)
                                     for k in ("bytes", "sha256")},
                    "eval": config.eval.to_dict(),
                    "train_manifest_sha256": manifest and manifest["sha256"],
                    "report": context})


# ---------------------------------------------------------------------------
# The check before reuse.

def read_record(path: str) -> tuple[dict[str, Any] | None, str | None]:
  """(record, None), (None, None) when absent, or (None, what is damaged)."""
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return None, None
  except (OSError, ValueError) as e:
    return None, type(e).__name__
  if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), dict):
    return None, f"a {type(record).__name__}, not a record"
  return record, None


def check_reuse(wd: Workdir, record_path: str, fingerprint: dict[str, Any], output: str
                ) -> tuple[bool, str | None]:
  """(whether `output` is what `fingerprint` would make, why not in a phrase).

  The phrase is None when there is nothing to redo from (no record, no output).
  """
  record, damaged = read_record(record_path)
  rel_out, rel_record = _rel(wd, output), _rel(wd, record_path)
  if damaged:
    return False, f"{rel_record} is damaged ({damaged})"
  present = os.path.lexists(output)
  if record is None:
    return False, (f"{rel_out} has no record of what made it ({rel_record} is missing)"
                   if present else None)
  if record["fingerprint"] != fingerprint:
    return False, f"made with other settings ({differences(record['fingerprint'], fingerprint)})"
  if not present:
    return False, f"{rel_out} is missing"
  now, then = file_digest(output), record.get("output") or {}
  if now["sha256"] != then.get("sha256"):
    change = (f"{then.get('bytes')} -> {now['bytes']} bytes" if now["bytes"] != then.get("bytes")
              else f"sha256 {_short(then.get('sha256'))} -> {_short(now['sha256'])}")
    return False, f"{rel_out} changed since it was made ({change})"
  return True, None


# ---------------------------------------------------------------------------
# A figure of an unfinished run says so on its face.

def label_figure(path: str, text: str) -> None:
  """Adds a band with `text` above the PNG at `path` (widened if the text needs it)."""
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    return
  with Image.open(path) as im:
    image = im.convert("RGB")
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = draw.textbbox((0, 0), text)
  band = bottom - top + 6
  labelled = Image.new("RGB", (max(image.width, right - left + 8), image.height + band), "white")
  labelled.paste(image, (0, band))
  ImageDraw.Draw(labelled).text((4, 3 - top), text, fill=(200, 0, 0))
  buffer = io.BytesIO()
  labelled.save(buffer, format="PNG")
  files.write_bytes(path, buffer.getvalue())
