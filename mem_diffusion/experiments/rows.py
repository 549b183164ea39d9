"""One summary row per finished run: its config's settings and its report's
numbers, the columns of summary.csv that the study (study.py) groups by.

Facts the row derives from the config rather than reads from it live here
too (how the model is conditioned, training draws per original image), so
that the study never parses spec strings.
"""

from __future__ import annotations

from typing import Any

import ml_collections


COLUMNS = ("name", "config", "seed", "dataset", "dummy_kind", "hybrid_mask", "num_dummy",
           "num_original", "sampling", "conditional", "conditioning", "num_steps", "batch_size",
           "loss_scale", "draws_per_original", "class_counts", "train_step",
           "final_loss", "num_samples",
           "replicate_ratio", "replicate_ci_low", "replicate_ci_high", "replicate_ratio_dedup",
           "replicate_dedup_ci_low", "replicate_dedup_ci_high", "replicate_ratio_originals",
           "replicate_originals_ci_low", "replicate_originals_ci_high", "blend_ratio",
           "d1_median_ratio", "frac_below_heldout_p05", "frechet", "frechet_heldout_split",
           "kid", "kid_heldout_split", "per_class", "run_seconds", "workdir")


def conditioning(config: ml_collections.ConfigDict) -> str:
  """How the model is conditioned: the conditioning control tells 'one
  label' and 'random labels' runs apart from the unconditional ones."""
  if not config.model.num_classes:
    return "unconditional"
  if config.data.get("random_labels", 0):
    return "random labels"
  dummy_labelled = config.data.dummy_kind not in ("", "cars")
  if dummy_labelled or config.data.dataset.endswith("_classes"):
    return "class labels"
  return "one label"


def draws_per_original(config: ml_collections.ConfigDict) -> float:
  """Training draws of each original image over the run (expected count).

  'uniform' batches draw every row of the train set alike; 'balanced' ones
  give the original class round(original_share x B) rows of every batch.
  """
  from mem_diffusion.data import train_set as ts  # pylint: disable=g-import-not-at-top
  d, t = config.data, config.training
  if d.sampling == "balanced" and d.num_dummy:
    return t.num_steps * round(d.original_share * t.batch_size) / d.num_original
  return t.num_steps * t.batch_size / ts.num_images(d)


def row(spec: str, config: ml_collections.ConfigDict, seed: int, workdir: str,
        report: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
  """The summary row of one finished run: its config's settings and report's numbers."""
  q = report.get("quality") or {}
  d1, feats = q.get("d1") or {}, q.get("features") or {}
  ci = report.get("replicate_ci95") or [None, None]
  ci_u = report.get("replicate_ci95_dedup") or [None, None]
  ci_o = (report.get("replicate_ci95_originals")
          or (None if config.data.num_dummy else report.get("replicate_ci95")) or [None, None])
  per_class = {c: {"ratio": v.get("replicate_ratio"), "ci95": v.get("replicate_ci95")}
               for c, v in (report.get("per_class") or {}).items()}
  dummy = report.get("dummy_label")
  if dummy:  # samples drawn with the dummy label (sampling.dummy_label_samples)
    per_class[f"{dummy['label']} (dummy label)"] = {"ratio": dummy["replicate_ratio"],
                                                   "ci95": dummy["replicate_ci95"]}
  return {
      "name": config.name, "config": spec, "seed": seed, "dataset": config.data.dataset,
      "dummy_kind": config.data.dummy_kind or "none",
      "hybrid_mask": config.data.hybrid_mask if config.data.dummy_kind == "hybrid" else None,
      "num_dummy": config.data.num_dummy if config.data.dummy_kind else 0,
      "num_original": config.data.num_original, "sampling": config.data.sampling,
      "conditional": bool(config.model.num_classes), "conditioning": conditioning(config),
      "num_steps": config.training.num_steps, "batch_size": config.training.batch_size,
      "loss_scale": float(config.training.get("loss_scale", 1.0)),
      "draws_per_original": round(draws_per_original(config), 1),
      # Only the two-population datasets ('cifar_classes', 'mondrian_classes')
      # take their counts from data.class_counts.
      "class_counts": ("/".join(str(c) for c in config.data.class_counts)
                       if config.data.dataset.endswith("_classes") else None),
      "train_step": report.get("train_step"), "final_loss": report.get("final_loss"),
      "num_samples": report.get("num_samples"), "replicate_ratio": report.get("replicate_ratio"),
      "replicate_ci_low": ci[0], "replicate_ci_high": ci[1],
      "replicate_ratio_dedup": report.get("replicate_ratio_dedup"),
      "replicate_dedup_ci_low": ci_u[0], "replicate_dedup_ci_high": ci_u[1],
      # Without dummies the whole train set is the originals.
      "replicate_ratio_originals": report.get("replicate_ratio_originals",
                                              None if config.data.num_dummy
                                              else report.get("replicate_ratio")),
      "replicate_originals_ci_low": ci_o[0], "replicate_originals_ci_high": ci_o[1],
      "blend_ratio": report.get("blend_ratio"),
      "d1_median_ratio": d1.get("median_ratio"),
      "frac_below_heldout_p05": d1.get("frac_samples_below_heldout_p05"),
      "frechet": feats.get("frechet"), "frechet_heldout_split": feats.get("frechet_heldout_split"),
      "kid": feats.get("kid"), "kid_heldout_split": feats.get("kid_heldout_split"),
      "per_class": per_class or None,
      "run_seconds": None if seconds is None else round(seconds, 1),
      "workdir": workdir,
  }
