"""Entropy checks of generated sets: the 1/3 ratio test, computed exactly.

Two checks guard the data side of the study:
- fresh-draw control: fresh draws of the original class measured against the
  train set must rarely be flagged as replicates (<= 1% for Mondrian), or a
  model that merely samples the distribution would look like it memorizes;
- no near-duplicates inside a train set (the ratio test of the set against
  itself, leaving each image out), since duplicates distort memorization.

Distances are exact: uint8 pixels as float64, the Gram matrix of integers
stays below 2**53, so |a|^2 + |b|^2 - 2ab is an exact integer. (This is
private to the data checks; the study's evaluator is mem_diffusion.analysis.replicates.)

CLI (the numbers in docs/data.md):
  python -m mem_diffusion.data.checks --sizes 32 16 8 --num_train 2000 --num_fresh 2000
"""

from __future__ import annotations

import json
import time

import numpy as np

from mem_diffusion.data import mondrian
from mem_diffusion.run import cli


def nearest_two(queries: np.ndarray, refs: np.ndarray, *, exclude_self: bool = False,
                chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Indices (n, 2) and Euclidean distances (n, 2) of the two nearest refs.

  With `exclude_self`, queries must be refs and query i never matches ref i.
  """
  q = queries.reshape(len(queries), -1).astype(np.float64)
  r = refs.reshape(len(refs), -1).astype(np.float64)
  if len(r) < 2 + int(exclude_self):
    raise ValueError("need at least two reference images (besides self)")
  r2 = np.einsum("ij,ij->i", r, r)
  idx = np.zeros((len(q), 2), np.int64)
  dist = np.zeros((len(q), 2), np.float64)
  for s in range(0, len(q), chunk):
    qc = q[s:s + chunk]
    d2 = np.einsum("ij,ij->i", qc, qc)[:, None] + r2[None, :] - 2.0 * qc @ r.T
    if exclude_self:
      d2[np.arange(len(qc)), np.arange(s, s + len(qc))] = np.inf
    top = np.argpartition(d2, 1, axis=1)[:, :2]
    vals = np.take_along_axis(d2, top, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    idx[s:s + len(qc)] = np.take_along_axis(top, order, axis=1)
    dist[s:s + len(qc)] = np.sqrt(np.maximum(np.take_along_axis(vals, order, axis=1), 0))
  return idx, dist


def ratio_flags(dist: np.ndarray, threshold: float = 1 / 3) -> np.ndarray:
  """d1 / d2 < threshold. An exact copy of a unique image (d1 = 0 < d2) is
  flagged; a copy of a duplicated image (d1 = d2 = 0) is not (known blind spot)."""
  d1, d2 = dist[:, 0], dist[:, 1]
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1), 1.0)
  return ratio < threshold


def fresh_draw_ratio(fresh: np.ndarray, train: np.ndarray, threshold: float = 1 / 3):
  _, dist = nearest_two(fresh, train)
  flags = ratio_flags(dist, threshold)
  return float(flags.mean()), dist


def self_duplicate_ratio(train: np.ndarray, threshold: float = 1 / 3):
  _, dist = nearest_two(train, train, exclude_self=True)
  flags = ratio_flags(dist, threshold)
  return float(flags.mean()), dist


def mondrian_control(seed: int, size: int, num_train: int, num_fresh: int) -> dict:
  """Fresh-draw and self-duplicate ratios of a Mondrian train set."""
  t0 = time.time()
  train = mondrian.mondrian_images(seed, np.arange(num_train), size)
  fresh = mondrian.mondrian_images(seed, np.arange(num_fresh), size, heldout=True)
  fresh_ratio, fdist = fresh_draw_ratio(fresh, train)
  self_ratio, _ = self_duplicate_ratio(train)
  return {
      "size": size, "num_train": num_train, "num_fresh": num_fresh, "seed": seed,
      "fresh_replicate_ratio": fresh_ratio,
      "fresh_replicates": int(round(fresh_ratio * num_fresh)),
      "train_self_duplicate_ratio": self_ratio,
      "fresh_min_d1_over_d2": float(np.min(fdist[:, 0] / fdist[:, 1])),
      "seconds": round(time.time() - t0, 1),
  }


def main(argv=None):
  parser = cli.ArgumentParser(prog="python -m mem_diffusion.data.checks",
                             description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[32, 16, 8])
  parser.add_argument("--num_train", type=int, default=2000)
  parser.add_argument("--num_fresh", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  # The config's own limits (data.image_size, data.num_original, seeds): the
  # nearest-two search needs 2 train images and holds both sets in memory.
  if not (all(8 <= s <= 512 for s in args.sizes) and 2 <= args.num_train <= 1_000_000
          and 1 <= args.num_fresh <= 1_000_000 and 0 <= args.seed < 2**32):
    parser.error(f"expected --sizes in 8..512, --num_train in 2..1000000, --num_fresh in "
                 f"1..1000000, --seed in 0..2**32-1; got {args.sizes}, {args.num_train}, "
                 f"{args.num_fresh}, {args.seed}")
  for size in args.sizes:
    print(json.dumps(mondrian_control(args.seed, size, args.num_train, args.num_fresh)),
          flush=True)


if __name__ == "__main__":
  main()
