"""The one runner of train -> sample -> eval, for main.py and the sweep.

A stage is complete only when its outputs carry a record of what produced
them and that record matches what the current config would produce now:

- train: `train_summary.json` and the newest checkpoint at
  `training.num_steps` (training itself resumes from the newest intact
  checkpoint otherwise);
- sample: `samples/record.json`; eval: `eval/record.json`: the digests of
  the params, the files and the config keys each was made from
  (mem_diffusion/run/records.py).

Anything else is redone, and the run says so in one line naming what
changed: a changed `sampling.num_samples`, a longer training run, a new
`eval.*` key or a sample file replaced by another never leaves an old report
standing. A stage writes its new outputs first, then its record, and only
then removes the outputs they replace, so a stage that fails (or a crash)
leaves the previous complete outputs and can only cause extra work.

Training's answer is the config's: a config asking for fewer steps than the
checkpoints hold is refused, and sample and eval refuse an unfinished
training run unless `allow_unfinished` asks for its latest checkpoint; then
the report, the summary and every figure say "step S of N". A report carries
an over-training curve only if this config would make exactly that curve.

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
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import ml_collections

from mem_diffusion import config as config_lib
from mem_diffusion import config_guard
from mem_diffusion import errors
from mem_diffusion.run import environment
from mem_diffusion.run import evaluate
from mem_diffusion.run import multihost
from mem_diffusion.run import over_training
from mem_diffusion.run import parallel
from mem_diffusion.run import records
from mem_diffusion import files
from mem_diffusion.run import sampling
from mem_diffusion.run import train
from mem_diffusion.run import workdir_lock
from mem_diffusion.run.workdir import Workdir

STAGES = ("train", "sample", "eval")


def _say(message: str) -> None:
  print(message, flush=True)


_read_json = records.read_json


def _write_json(path: str, obj: Any) -> None:
  files.write_json(path, obj)


def _is_lead() -> bool:
  return jax.process_index() == 0


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
  for folder in (wd.checkpoints, wd.tensorboard, wd.train_grids, wd.samples_dir, wd.eval_dir,
                 os.path.dirname(wd.train_manifest)):
    if os.path.lexists(folder) and not os.path.isdir(folder):  # found only after training
      raise errors.WorkdirError(f"{folder} is not a directory; move it away or use another "
                                "--workdir")


def check_config_record(config: ml_collections.ConfigDict, wd: Workdir) -> None:
  """Refuses a config that does not match the run the workdir holds."""
  if not wd.has_checkpoints():
    return  # nothing trained yet: the record (if any) is not binding
  if not os.path.exists(wd.config_json):
    raise errors.WorkdirError(
        f"{wd.root} holds checkpoints but no config.json recording the config that "
        "made them; restore config.json or use a new --workdir")
  saved, _ = environment.split_record(_read_json(wd.config_json))
  saved = records.without_marker(saved)
  safe = config_guard.guard_workdir_config(json.dumps(saved), config)
  if safe:
    _say(f"note: keys changed since this workdir was made (allowed): {', '.join(safe)}")


# ---------------------------------------------------------------------------
# Whether each stage's outputs are what the config would make now.

def _sample_check(config: ml_collections.ConfigDict, wd: Workdir
                  ) -> tuple[dict[str, Any], bool, str | None]:
  """(the samples' fingerprint now, whether the samples match it, why not)."""
  fingerprint = records.sample_fingerprint(config, wd)
  npz = wd.samples_npz(config.sampling.num_samples, config.data.image_size)
  return (fingerprint, *records.check_reuse(wd, wd.samples_record, fingerprint, npz))


def _report_context(config: ml_collections.ConfigDict, wd: Workdir, samples: dict[str, Any]
                    ) -> tuple[dict[str, Any], str | None]:
  """What the report says about training, and why a stored curve is left out."""
  step = (samples["fingerprint"].get("source") or {}).get("checkpoint_step")
  points, why = records.reportable_curve(config, wd, step)
  if step is None:  # a params file: no training of this workdir behind the samples
    return {}, why
  num_steps = int(config.training.num_steps)
  context = {"train_step": step, "train_num_steps": num_steps,
             "training": ("finished" if step == num_steps
                          else records.unfinished_note(step, num_steps))}
  summary = _read_json(wd.train_summary)
  if isinstance(summary, dict) and summary.get("step") == step:
    context["final_loss"] = summary.get("final_loss")
  if points:
    context["over_training"] = over_training.summarize(points)
  return context, why


def is_complete(config: ml_collections.ConfigDict, workdir: str, stage: str) -> bool:
  """Whether `stage`'s outputs in `workdir` are what `config` would produce now."""
  wd = Workdir(workdir)
  if stage not in STAGES:
    raise errors.ConfigError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
  if stage == "train":
    summary = _read_json(wd.train_summary)
    return (isinstance(summary, dict) and summary.get("step") == config.training.num_steps
            and records.latest_step(wd) == config.training.num_steps)
  try:
    _, ok, _ = _sample_check(config, wd)
    if stage == "sample" or not ok:
      return ok
    samples, _ = records.read_record(wd.samples_record)
    context, _ = _report_context(config, wd, samples)
    fingerprint = records.eval_fingerprint(config, wd, samples, context)
    return records.check_reuse(wd, wd.eval_record, fingerprint, wd.report_json)[0]
  except errors.UserError:  # an input missing (no checkpoint): the stage says so when it runs
    return False


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
  records.check_not_past(config, wd)
  if is_complete(config, wd.root, "train"):
    _say(f"train: complete at step {config.training.num_steps} (skipped)")
    return
  if wd.has_checkpoints():  # resuming: the numerics must be the checkpoints'
    _, recorded = environment.split_record(_read_json(wd.config_json))
    note = environment.check_resume(recorded, environment.facts(), accept=accept_environment)
    if note:
      _say(note)
  train.train_and_evaluate(config, wd.root)


def _training_position(config: ml_collections.ConfigDict, wd: Workdir,
                       allow_unfinished: bool) -> None:
  """Refuses to sample a longer or (unless allowed) an unfinished training run."""
  if config.sampling.params_file:
    return
  records.check_not_past(config, wd)
  step, num_steps = records.latest_step(wd), int(config.training.num_steps)
  if step is not None and step < num_steps:
    if not allow_unfinished:
      records.refuse_unfinished(step, num_steps, "sample")
    _say(f"sample: training is {records.unfinished_note(step, num_steps)} (allowed)")


def _sample(config: ml_collections.ConfigDict, wd: Workdir,
            allow_unfinished: bool = False) -> None:
  _training_position(config, wd, allow_unfinished)
  fingerprint, ok, why = _sample_check(config, wd)
  npz = wd.samples_npz(config.sampling.num_samples, config.data.image_size)
  if ok:
    _say(f"sample: {os.path.relpath(npz)} is up to date (skipped)")
    return
  if why:
    _say(f"samples: {why}; redoing")
  sampling.sample_to_workdir(config, wd.root)
  if _is_lead():  # the new samples first, then their record, then what they replace
    if "training" in fingerprint:
      records.label_figure(wd.samples_grid, f"training {fingerprint['training']}")
    _write_json(wd.samples_record, {"stage": "sample", "fingerprint": fingerprint,
                                    "output": records.output_record(wd, npz)})
  _remove([p for p in glob.glob(os.path.join(wd.samples_dir, "samples_*.npz")) if p != npz])
  parallel.sync("samples_recorded")  # the others read the record next


def _eval(config: ml_collections.ConfigDict, wd: Workdir,
          allow_unfinished: bool = False) -> dict[str, Any]:
  npz = wd.samples_npz(config.sampling.num_samples, config.data.image_size)
  if not os.path.lexists(npz) and not os.path.lexists(wd.samples_record):
    raise errors.WorkdirError(f"no finished samples at {npz}: run --mode=sample "
                              "(or --mode=all) first")
  if not config.sampling.params_file:
    records.check_not_past(config, wd)
  _, ok, why = _sample_check(config, wd)
  if not ok:
    raise errors.WorkdirError(f"the samples cannot be evaluated: {why or f'no file {npz}'}; "
                              "run --mode=sample (or --mode=all) first")
  samples, _ = records.read_record(wd.samples_record)
  context, curve_note = _report_context(config, wd, samples)
  unfinished = context.get("training", "finished") != "finished"
  if unfinished:
    if not allow_unfinished:
      records.refuse_unfinished(context["train_step"], context["train_num_steps"], "evaluate")
    _say(f"eval: training is {context['training']} (allowed)")
  fingerprint = records.eval_fingerprint(config, wd, samples, context)
  ok, why = records.check_reuse(wd, wd.eval_record, fingerprint, wd.report_json)
  if ok:
    _say(f"eval: {os.path.relpath(wd.report_json)} is up to date (skipped)")
    return _read_json(wd.report_json)
  for line in (why and f"{why}; redoing", curve_note):
    if line:
      _say(f"eval: {line}")
  report = parallel.lead_only(  # one writer of the report and figures
      lambda: evaluate.evaluate_workdir(config, wd.root, context=context),
      lambda: _read_json(wd.report_json))
  if _is_lead():
    if unfinished:
      for png in (wd.nearest_neighbors_png, wd.ratio_hist_png, wd.distance_cdf_png):
        records.label_figure(png, f"training {context['training']}")
    _write_json(wd.eval_record, {"stage": "eval", "fingerprint": fingerprint,
                                 "output": records.output_record(wd, wd.report_json)})
  return report


def run(config: ml_collections.ConfigDict, workdir: str,
        stages: Sequence[str] = STAGES, *, validate: bool = True,
        allow_unfinished: bool = False,
        summary: Callable[[dict[str, Any], Workdir], None] | None = None,
        accept_environment: bool | None = None) -> dict[str, Any] | None:
  """Runs `stages` in order in `workdir`, skipping complete ones; returns the report.

  Raises errors.UserError (with its exit code) for every documented failure.
  `allow_unfinished` lets sample and eval take an unfinished training run's
  newest checkpoint (main.py --allow_unfinished); the outputs then say so.
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
  records.check_owner(wd)
  report = None
  with workdir_lock.hold_for_run(wd.root):
    check_config_record(config, wd)
    records.check_checkpoints_are_this_runs(wd)
    for stage in stages:
      if stage == "train":
        _train(config, wd, accept_environment)
      elif stage == "sample":
        _sample(config, wd, allow_unfinished)
      else:
        report = _eval(config, wd, allow_unfinished)
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
  training = report.get("training")
  note = f" (training {training})" if training and training != "finished" else ""
  lines = [f"== result: {os.path.relpath(wd.root)}{note} ==",
           f"replicate ratio      {_fmt(report.get('replicate_ratio'))}  "
           f"({report.get('num_replicates', '-')}/{n} samples with d1/d2 < "
           f"{_fmt(report.get('threshold'), 3)}; 95% CI {_fmt(ci[0])}-{_fmt(ci[1])})"]
  if report.get("num_duplicate_train_pairs"):
    dci = report.get("replicate_ci95_dedup") or [None, None]
    lines.append(f"  duplicates merged  {_fmt(report.get('replicate_ratio_dedup'))}  "
                 f"({report['num_duplicate_train_pairs']} duplicate training pairs; "
                 f"95% CI {_fmt(dci[0])}-{_fmt(dci[1])})")
  if report.get("replicate_ratio_originals") is not None:
    oci = report.get("replicate_ci95_originals") or [None, None]
    lines.append(f"  originals only     {_fmt(report['replicate_ratio_originals'])}  "
                 f"(the dummies left out of the reference set; 95% CI "
                 f"{_fmt(oci[0])}-{_fmt(oci[1])})")
  dummy = report.get("dummy_label")
  if dummy:
    dci = dummy.get("replicate_ci95") or [None, None]
    lines.append(f"dummy label          {_fmt(dummy.get('replicate_ratio'))}  "
                 f"({dummy.get('num_samples')} samples of label {dummy.get('label')}, not in "
                 f"the ratio above; 95% CI {_fmt(dci[0])}-{_fmt(dci[1])})")
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
