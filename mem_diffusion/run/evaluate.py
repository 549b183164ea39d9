"""--mode=eval: samples + train set -> `<workdir>/eval/` report and pictures.

The reference set of the replicate test is the WHOLE training set the model
saw (original images and dummies): a sample that copies a "more cars" dummy
image is as much a replicate as one that copies an original. The quality
figure compares the samples with held-out real images of the original class
(pool cars, fresh Mondrian draws), because a lower replicate ratio only means
generalization when the samples still look like the class (docs/reference.md#replicate-test).

The train set is rebuilt from the config (it is a pure function of
`config.data`), and checked against the manifest that training wrote, so an
evaluation can never silently measure against a different set.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from mem_diffusion import data
from mem_diffusion import files
from mem_diffusion import npz_io
from mem_diffusion.analysis import quality
from mem_diffusion.analysis import replicates
from mem_diffusion import report as report_lib
from mem_diffusion.run import sampling
from mem_diffusion.run.workdir import Workdir

_MIN_HELDOUT = 4


def _check_manifest(train_set, workdir: str) -> None:
  """Refuses to evaluate against a train set other than the one trained on.

  Compares the (source, index, label) rows that training recorded with those
  of the set rebuilt now; a changed data.* key or CIFAR split shows up here.
  """
  path = Workdir(workdir).train_manifest
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f).get("images")
  now = train_set.manifest()["images"]
  if saved is not None and saved != now:
    first = next((i for i, (a, b) in enumerate(zip(saved, now)) if a != b),
                 min(len(saved), len(now)))
    raise ValueError(
        f"the train set rebuilt from the config differs from the one training used "
        f"({path}, {len(saved)} vs {len(now)} images, first difference at row {first}); "
        "was a data.* key changed?")


def evaluate_arrays(samples: np.ndarray, train_images: np.ndarray, heldout: np.ndarray | None, *,
                    eval_cfg: ml_collections.ConfigDict, out_dir: str,
                    sample_labels: np.ndarray | None = None,
                    train_labels: np.ndarray | None = None,
                    train_sources: np.ndarray | None = None,
                    num_original: int | None = None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Replicate/blend tests, quality figures and pictures for arrays in memory.

  With `num_original` (rows [0, num_original) of the train set are the
  original class) and dummies behind them, the report also has the ratio
  against the originals alone: with hybrids built from held-out originals,
  a dummy can be a sample's second neighbour and change d1/d2.
  """
  report, per_sample = replicates.analyze(
      samples, train_images, sample_labels=sample_labels, train_labels=train_labels,
      threshold=eval_cfg.ratio_threshold, blend_k=eval_cfg.blend_k, dup_rms=eval_cfg.dup_rms)
  if num_original is not None and 2 <= num_original < len(train_images):
    alone, _ = replicates.analyze(samples, train_images[:num_original],
                                  threshold=eval_cfg.ratio_threshold, blend_k=0,
                                  dup_rms=eval_cfg.dup_rms)
    report["replicate_ratio_originals"] = alone["replicate_ratio"]
    report["replicate_ci95_originals"] = alone["replicate_ci95"]
  if train_sources is not None:
    report["replicated_train_source_counts"] = _copied_sources(train_sources, per_sample)
  os.makedirs(out_dir, exist_ok=True)
  if heldout is None or heldout.shape[0] < _MIN_HELDOUT:
    # E.g. 2k cars + 4k more cars uses all 6,000 CIFAR-10 cars: no real car is
    # left that the model has not seen. Say so rather than compare with train;
    # and say which limit it was, the data's or the setting's.
    if eval_cfg.num_heldout < _MIN_HELDOUT:
      why = (f"eval.num_heldout={eval_cfg.num_heldout} allows fewer than the {_MIN_HELDOUT} "
             "held-out real images the quality figure needs")
    else:
      why = (f"fewer than {_MIN_HELDOUT} held-out real images of the original class exist "
             "for this train set")
    report["quality"] = {"unavailable": why}
  else:
    report["quality"] = quality.quality_report(
        samples, heldout, train_images, figure_path=os.path.join(out_dir, "distance_cdf.png"))
  report.update(extra or {})
  np.savez(os.path.join(out_dir, "per_sample.npz"),
           **{k: v for k, v in per_sample.items()})
  report_lib.nearest_neighbors_figure(samples, train_images, per_sample,
                                      os.path.join(out_dir, "nearest_neighbors.png"))
  report_lib.ratio_histogram(per_sample["ratio"], os.path.join(out_dir, "ratio_hist.png"),
                             threshold=eval_cfg.ratio_threshold)
  # report.json last: its presence marks the stage complete for --mode=all.
  files.write_json(os.path.join(out_dir, "report.json"), report)
  return report


def _copied_sources(train_sources: np.ndarray, per_sample: dict[str, np.ndarray]
                    ) -> dict[str, int]:
  """{source: replicates whose nearest training image comes from it}."""
  copied = np.asarray(train_sources)[per_sample["nn1"]][per_sample["is_replicate"]]
  return {str(s): int(c) for s, c in zip(*np.unique(copied, return_counts=True))}


def _dummy_label_block(samples: np.ndarray, label: int, train_set, eval_cfg
                       ) -> dict[str, Any]:
  """The dummy class's own replicate ratio: samples drawn with the dummy
  label against the whole train set, and which kind of image each replicate
  copies (a dummy, or an original leaking across labels)."""
  report, per_sample = replicates.analyze(samples, train_set.images,
                                          threshold=eval_cfg.ratio_threshold, blend_k=0,
                                          dup_rms=eval_cfg.dup_rms)
  return {"label": label, "num_samples": int(samples.shape[0]),
          "replicate_ratio": report["replicate_ratio"],
          "replicate_ci95": report["replicate_ci95"],
          "replicated_train_source_counts": _copied_sources(train_set.sources, per_sample)}


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     context: dict[str, Any] | None = None) -> dict[str, Any]:
  """Evaluates `<workdir>/samples/samples_*.npz`; writes `<workdir>/eval/`.

  `context` is what the report says about the training behind the samples
  (step S of N, final loss, the over-training summary); the stage runner
  checks it against the samples' and the curve's records, which this
  function cannot, so it reads no training output itself.
  """
  workdir = os.path.abspath(workdir)
  path = sampling.samples_path(config, workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no samples at {path}: run --mode=sample first")
  samples, labels = npz_io.load_npz(path)
  train_set = data.build_train_set(config.data)
  extra: dict[str, Any] = {}
  k = config.sampling.get("dummy_label_samples", 0)
  if k:  # the last k samples carry the dummy label (run/sampling.py)
    extra["dummy_label"] = _dummy_label_block(samples[-k:], sampling.dummy_label(config),
                                              train_set, config.eval)
    samples, labels = samples[:-k], None if labels is None else labels[:-k]
  _check_manifest(train_set, workdir)
  num_heldout = min(config.eval.num_heldout, data.heldout_available(config.data))
  heldout = data.heldout_images(config.data, num_heldout) if num_heldout >= _MIN_HELDOUT else None
  logging.info("evaluating %d samples against %d training images (%d held-out reals)",
               samples.shape[0], train_set.images.shape[0], num_heldout)
  extra.update({"config_name": config.name, "samples_path": path,
                "sampling_chain": sampling.chain_description(config.sampling),
                "dummy_kind": config.data.dummy_kind, "num_dummy": config.data.num_dummy,
                "num_original": config.data.num_original, "seed": config.seed})
  extra.update(context or {})
  report = evaluate_arrays(
      samples, train_set.images, heldout, eval_cfg=config.eval,
      out_dir=Workdir(workdir).eval_dir, sample_labels=labels,
      train_labels=train_set.labels, train_sources=train_set.sources,
      num_original=train_set.num_original, extra=extra)
  logging.info("replicate ratio %.4f (95%% CI %s), duplicate-aware %.4f, blend ratio %.4f",
               report["replicate_ratio"], report["replicate_ci95"],
               report["replicate_ratio_dedup"], report["blend_ratio"])
  return report
