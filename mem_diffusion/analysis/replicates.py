"""The 1/3 replicate test, the blend test, duplicates, and the replicates CLI.

The exact nearest-neighbour search lives in `neighbors` (its docstring says
why the answers equal a float64 brute force); the convex-hull projection in
`blends`.


Two replicate ratios
--------------------
`replicate_ratio` is the study's rule exactly: d1 / d2 < 1/3 against the
training set as stored, duplicates included, so it can be compared with the
seed's and the papers' numbers. A sample that copies an image stored twice has
d1 = d2 = 0 (its ratio is taken as 1: the two distances are equal) and is not
counted. `replicate_ratio_dedup` is the duplicate-aware figure beside it: exact
duplicates (identical pixels) and near-duplicates (RMS pixel difference <=
`dup_rms`, default `DEFAULT_DUP_RMS` = 2 levels of 255, i.e. invisible;
grouped transitively) are first collapsed onto their lowest index, and the
test runs against those representatives. The two agree when the training set
has no duplicates; docs/quality.md has the worked example.

Blends
------
A blend of training images passes the 1/3 test (d1 ~ d2), so each sample that
is not a replicate under the duplicate-aware rule is projected onto the convex
hull of its k nearest representatives; rho = residual / d1, and it is a blend
when rho < threshold and the second-largest convex weight is >= 0.1. Blends
and `memorized_ratio` are duplicate-aware figures.

"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np

from mem_diffusion import files
from mem_diffusion.analysis import neighbors
from mem_diffusion import npz_io
from mem_diffusion import report as report_lib
from mem_diffusion.run import cli
from mem_diffusion.analysis.blends import blend_partners, blend_projection
# Re-exported: the nearest-neighbour search is part of this module's API.
from mem_diffusion.analysis.neighbors import (  # pylint: disable=unused-import
    DEFAULT_DUP_RMS, find_duplicates, nearest_k, nearest_two)  # noqa: F401  nearest_two: re-exported

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------
# The report.

def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float]:
  """Wilson score interval for a binomial proportion ([0, 1] when n = 0)."""
  if n <= 0:
    return [0.0, 1.0]
  p = successes / n
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return [max(0.0, centre - half), min(1.0, centre + half)]


_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def quantiles(x: np.ndarray) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  return {f"q{int(round(q * 100)):02d}": float(np.quantile(x, q)) for q in _QUANTILES}


def _rate(prefix: str, suffix: str, hits: np.ndarray) -> dict[str, Any]:
  n, r = int(hits.size), int(hits.sum())
  count = {"replicate": "num_replicates", "blend": "num_blends"}.get(prefix)
  out = {f"{count}{suffix}": r} if count else {}
  out.update({f"{prefix}_ratio{suffix}": r / n, f"{prefix}_ci95{suffix}": wilson_interval(r, n)})
  return out


def _rates(is_rep: np.ndarray, is_rep_dedup: np.ndarray, is_blend: np.ndarray
           ) -> dict[str, Any]:
  """The seed's ratio, the duplicate-aware one, blends and their union."""
  out: dict[str, Any] = {"num_samples": int(is_rep.size)}
  out.update(_rate("replicate", "", is_rep))
  out.update(_rate("replicate", "_dedup", is_rep_dedup))
  out.update(_rate("blend", "", is_blend))
  out.update(_rate("memorized", "", is_rep_dedup | is_blend))
  return out


def distance_ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
  """d1 / d2, and 1 where d2 = 0 (then d1 = d2 = 0: two identical nearest images)."""
  d1, d2 = np.asarray(d1, np.float64), np.asarray(d2, np.float64)
  return np.divide(d1, d2, out=np.ones_like(d1), where=d2 > 0)


def analyze(samples: np.ndarray, train: np.ndarray, *, sample_labels: np.ndarray | None = None,
            train_labels: np.ndarray | None = None, threshold: float = 1 / 3,
            blend_k: int = 8, blend_threshold: float = 1 / 3, min_second_weight: float = 0.1,
            blend_partners_k: int = 4, dup_rms: float = DEFAULT_DUP_RMS,
            chunk_size: int | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Replicate (seed's and duplicate-aware) and blend tests against a training set.

  Args:
    samples, train: uint8 (N, H, W, 3) and (M, H, W, 3).
    sample_labels, train_labels: optional int labels (per-class ratios; the
      class of the replicated training images).
    threshold: a sample is a replicate when d1 / d2 < threshold (study: 1/3).
    blend_k: neighbours spanning the hull of the blend test (0 disables it).
    blend_threshold, min_second_weight: a non-replicate is a blend when
      rho < blend_threshold and its second-largest hull weight >= this.
    blend_partners_k: the hull also gets this many candidate partners of a
      two-way blend with the nearest image (`blend_partners`): the minor
      component of an unbalanced blend is often not among the k nearest.
    dup_rms: near-duplicate training images (RMS pixel difference <= this)
      are merged with exact duplicates for the duplicate-aware ratio and the
      blend test; 0 = exact duplicates only. The seed's ratio ignores it.
    chunk_size: samples per jitted step.

  Returns:
    (report, per_sample): a JSON-ready dict, and arrays (indices into the
    ORIGINAL train array, ties to the lower index):
    - the seed's rule, train as stored: nn1, nn2, d1, d2 (float64), ratio
      (`distance_ratio`), is_replicate;
    - the duplicate-aware rule (each index the lowest of its duplicate
      group): nn1_dedup, nn2_dedup, d1_dedup, d2_dedup, ratio_dedup,
      is_replicate_dedup;
    - the blend test: rho (NaN where not tested: duplicate-aware
      replicates), is_blend, hull (N, k + p) (the k nearest representatives,
      then the blend partners; a vertex listed twice is used once) and
      weights (N, k + p) of the projection (all 0 where not tested).
  """
  start = time.perf_counter()
  samples = npz_io.check_images(samples, "samples")
  train = npz_io.check_images(train, "train")
  if samples.shape[1:] != train.shape[1:]:
    raise ValueError(f"image sizes differ: samples {samples.shape[1:]} vs train {train.shape[1:]}")
  if not 0 < threshold <= 1:
    raise ValueError(f"threshold={threshold} must be in (0, 1]")
  if blend_k < 0 or blend_k == 1:
    raise ValueError(f"blend_k={blend_k} must be 0 (no blend test) or >= 2")
  if not dup_rms >= 0:
    raise ValueError(f"dup_rms={dup_rms} must be >= 0 (0 = merge exact duplicates only)")
  n = samples.shape[0]
  if sample_labels is not None:
    sample_labels = npz_io.check_labels(sample_labels, n, "sample_labels")
  if train_labels is not None:
    train_labels = npz_io.check_labels(train_labels, train.shape[0], "train_labels")

  rep, dup_pairs = find_duplicates(train, dup_rms=dup_rms, chunk_size=chunk_size or 1024)
  uniq = np.unique(rep)
  if uniq.size < 2:
    raise ValueError(f"the training set has {uniq.size} distinct image(s) after deduplication; "
                     "the ratio test needs at least 2")
  # Duplicate-aware: the k nearest representatives (k >= 2 also feeds the hull).
  k = max(2, min(blend_k, uniq.size))
  ref = train[uniq]
  idx, sq = nearest_k(samples, ref, k, chunk_size=chunk_size)
  fallback_rows = int(neighbors.last_stats.get("fallback_rows", 0))
  knn = uniq[idx]  # uniq is sorted, so ties still go to the lower original index
  dist = np.sqrt(sq.astype(np.float64))
  d1u, d2u = dist[:, 0], dist[:, 1]
  ratio_u = distance_ratio(d1u, d2u)
  is_rep_u = ratio_u < threshold
  # The seed's rule: the train set as stored. Without duplicates the
  # representatives are the whole set and the search above already answers it.
  if uniq.size == train.shape[0]:
    nn, d1, d2 = knn[:, :2], d1u, d2u
  else:
    nn, sq2 = nearest_k(samples, train, 2, chunk_size=chunk_size)
    fallback_rows += int(neighbors.last_stats.get("fallback_rows", 0))
    d1, d2 = np.sqrt(sq2[:, 0].astype(np.float64)), np.sqrt(sq2[:, 1].astype(np.float64))
  ratio = distance_ratio(d1, d2)
  is_rep = ratio < threshold

  if blend_k >= 2:
    hull = knn
    if blend_partners_k > 0:
      partners = blend_partners(samples, ref, idx[:, 0], blend_partners_k, chunk_size=chunk_size)
      hull = np.concatenate([knn, uniq[partners]], axis=1)
    rho = np.full(n, np.nan)
    weights = np.full((n, hull.shape[1]), np.nan)
    test = ~is_rep_u  # replicates need no blend test
    if test.any():
      rho[test], weights[test] = blend_projection(samples[test], train, hull[test], d1u[test])
    weights = np.where(np.isnan(weights), 0.0, weights)
    second = -np.sort(-weights, axis=1)[:, 1]
    is_blend = ~is_rep_u & (rho < blend_threshold) & (second >= min_second_weight)
  else:
    hull, rho, weights = knn, np.ones(n), np.eye(k)[np.zeros(n, int)]
    is_blend = np.zeros(n, bool)

  report: dict[str, Any] = {
      "num_samples": n,
      "num_train": int(train.shape[0]),
      "num_train_unique": int(uniq.size),
      "image_shape": list(samples.shape[1:]),
      "threshold": float(threshold),
      "blend_k": int(blend_k),
      "blend_partners_k": int(blend_partners_k),
      "blend_threshold": float(blend_threshold),
      "min_second_weight": float(min_second_weight),
      "dup_rms": float(dup_rms),
  }
  report.update(_rates(is_rep, is_rep_u, is_blend))
  report.update({
      "num_distinct_replicated_train": int(np.unique(nn[is_rep, 0]).size),
      "num_distinct_replicated_train_dedup": int(np.unique(knn[is_rep_u, 0]).size),
      "num_duplicate_train_pairs": len(dup_pairs),
      "num_duplicate_train_groups": int(np.sum(np.bincount(rep) > 1)),
      "duplicate_train_pairs": dup_pairs,
      "ratio_quantiles": quantiles(ratio),
      "ratio_dedup_quantiles": quantiles(ratio_u),
      "d1_quantiles": quantiles(d1),
      "rho_quantiles": quantiles(rho[~is_rep_u]) if (~is_rep_u).any() else {},
      "exact_fallback_rows": fallback_rows,
  })
  if sample_labels is not None:
    report["per_class"] = {
        str(c): _rates(is_rep[sample_labels == c], is_rep_u[sample_labels == c],
                       is_blend[sample_labels == c])
        for c in np.unique(sample_labels).tolist()}
  if train_labels is not None:
    nn_labels = train_labels[nn[:, 0]]
    report["replicated_train_class_counts"] = {
        str(c): int(v) for c, v in zip(*np.unique(nn_labels[is_rep], return_counts=True))}
    if sample_labels is not None:
      report["nn1_same_class_ratio"] = float(np.mean(nn_labels == sample_labels))
  report["seconds"] = time.perf_counter() - start
  per_sample = {
      "nn1": nn[:, 0], "nn2": nn[:, 1], "d1": d1, "d2": d2, "ratio": ratio, "is_replicate": is_rep,
      "nn1_dedup": knn[:, 0], "nn2_dedup": knn[:, 1], "d1_dedup": d1u, "d2_dedup": d2u,
      "ratio_dedup": ratio_u, "is_replicate_dedup": is_rep_u,
      "rho": rho, "is_blend": is_blend, "hull": hull, "weights": weights,
  }
  return report, per_sample


# ----------------------------------------------------------------------------
# Command line.

def _parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
      prog="python -m mem_diffusion.replicates",
      description="Exact replicate (d1/d2 < threshold) and blend tests of samples against a "
                  "training set, both improved-diffusion npz files (arr_0 uint8 NHWC, "
                  "optional arr_1 labels).")
  p.add_argument("--samples", required=True, help="samples npz")
  p.add_argument("--train", required=True, help="training images npz")
  p.add_argument("--out", required=True, help="report.json to write")
  p.add_argument("--per-sample", default="", help="optional npz of per-sample arrays")
  p.add_argument("--grid", default="", help="optional PNG: sample | 1st NN | 2nd NN rows")
  p.add_argument("--hist", default="", help="optional PNG: histogram of d1/d2")
  p.add_argument("--threshold", type=float, default=1 / 3)
  p.add_argument("--blend-k", type=int, default=8)
  p.add_argument("--dup-rms", type=float, default=DEFAULT_DUP_RMS,
                 help="duplicate-aware ratio: training images with RMS pixel difference "
                      "<= this (0..255) are merged; 0 = exact duplicates only (config: "
                      "eval.dup_rms). The seed's ratio never merges.")
  p.add_argument("--chunk-size", type=int, default=1024)
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    outputs = {"--" + flag.replace("_", "-"): getattr(args, flag)
               for flag in ("out", "per_sample", "grid", "hist")}
    for flag, path in outputs.items():  # before any compute
      if path:
        files.check_output_path(path, flag)
      if path and flag in ("--grid", "--hist") and not path.lower().endswith(".png"):
        raise npz_io.InputError(f"{flag} {path!r}: expected a .png file (a figure)")
    files.check_distinct({"--samples": args.samples, "--train": args.train, **outputs})
    samples, sample_labels = npz_io.load_npz(args.samples, name=args.samples)
    train, train_labels = npz_io.load_npz(args.train, name=args.train)
    if samples.shape[1:] != train.shape[1:]:
      raise npz_io.InputError(f"image sizes differ: {args.samples} has {samples.shape[1:]}, "
                              f"{args.train} has {train.shape[1:]}")
    report, per_sample = analyze(samples, train, sample_labels=sample_labels,
                                 train_labels=train_labels, threshold=args.threshold,
                                 blend_k=args.blend_k, dup_rms=args.dup_rms,
                                 chunk_size=args.chunk_size)
  except (ValueError, OSError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2
  report["samples_path"], report["train_path"] = args.samples, args.train
  try:
    files.write_json(args.out, report)
    if args.per_sample:
      files.write_npz(args.per_sample, **per_sample)
    if args.grid:
      report_lib.nearest_neighbors_figure(samples, train, per_sample, args.grid)
    if args.hist:
      report_lib.ratio_histogram(per_sample["ratio"], args.hist, args.threshold)
  except OSError as e:  # errors.OutputError (full disk, read-only) or a figure write
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 1
  ci, ci_u = report["replicate_ci95"], report["replicate_ci95_dedup"]
  print(f"replicates {report['num_replicates']}/{report['num_samples']} = "
        f"{report['replicate_ratio']:.4f} (95% CI {ci[0]:.4f}-{ci[1]:.4f}); "
        f"duplicate-aware {report['num_replicates_dedup']} = "
        f"{report['replicate_ratio_dedup']:.4f} (95% CI {ci_u[0]:.4f}-{ci_u[1]:.4f}; "
        f"{report['num_duplicate_train_pairs']} duplicate pairs in "
        f"{report['num_duplicate_train_groups']} groups merged, unique train "
        f"{report['num_train_unique']}/{report['num_train']}); blends {report['num_blends']} "
        f"-> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
