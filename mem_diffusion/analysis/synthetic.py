"""Synthetic image sets with known answers: copies, blends, duplicates, novel images.

Used by the tests, the replicate benchmark and self-checks of the detector.
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------
# Synthetic image sets with known answers (tests, benchmark, self-checks).

def _random_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """Smooth colour fields with a few sharp shapes: high intrinsic dimension."""
  grid = np.linspace(0.0, 3.0, size)
  lo, frac = np.minimum(grid.astype(int), 2), grid - np.minimum(grid.astype(int), 2)
  interp = np.zeros((size, 4))
  interp[np.arange(size), lo] = 1 - frac
  interp[np.arange(size), lo + 1] = frac
  coarse = rng.normal(0.0, 1.0, (n, 4, 4, 3))
  img = 128.0 + 45.0 * np.einsum("hi,nijc,wj->nhwc", interp, coarse, interp)
  yy, xx = np.mgrid[0:size, 0:size]
  for _ in range(4):
    cy, cx = rng.uniform(0, size, (2, n, 1, 1))
    rad = rng.uniform(size / 10, size / 4, (n, 1, 1))
    colour = rng.uniform(0, 255, (n, 1, 1, 3))
    circle = rng.random((n, 1, 1)) < 0.5
    inside = np.where(circle, (yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2,
                      (np.abs(yy - cy) < rad) & (np.abs(xx - cx) < rad))
    img = np.where(inside[..., None], colour, img)
  img += rng.normal(0.0, 3.0, img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def synthetic_set(seed: int, *, num_train: int = 512, num_copies: int = 64, num_blend2: int = 64,
                  num_blend3: int = 0, num_novel: int = 64, num_train_dups: int = 0,
                  image_size: int = 32, copy_noise: float = 6.0,
                  blend_weights: tuple[float, float] = (0.2, 0.8)) -> dict[str, np.ndarray]:
  """Train images and samples of known kind: noisy copies, blends, novel images.

  Returns a dict with 'train', 'samples' (uint8), 'kind' (0 copy, 2 two-way
  blend, 3 three-way blend, 4 novel), 'source' (N, 3) train indices (-1
  unused) and 'mix' (N, 3) weights. `num_train_dups` training images are
  duplicated at the end of the train set (exact copies of random images).
  """
  rng = np.random.default_rng(seed)
  train = _random_images(rng, num_train + num_novel, image_size)
  novel, train = train[num_train:], train[:num_train]
  if num_train_dups:
    train = np.concatenate([train, train[rng.choice(num_train, num_train_dups, replace=False)]])
  pick = lambda size: rng.choice(num_train, size=size, replace=False)
  src = [np.stack([pick(1)[0], -1, -1]) for _ in range(num_copies)]
  mix = [np.array([1.0, 0, 0]) for _ in range(num_copies)]
  for _ in range(num_blend2):
    w = rng.uniform(*blend_weights)
    src.append(np.concatenate([pick(2), [-1]]))
    mix.append(np.array([w, 1 - w, 0.0]))
  for _ in range(num_blend3):
    src.append(pick(3))
    mix.append(rng.dirichlet([4.0, 4.0, 4.0]))
  src, mix = np.array(src, np.int64).reshape(-1, 3), np.array(mix).reshape(-1, 3)
  t = train.astype(np.float64)
  made = np.einsum("nk,nkhwc->nhwc", mix, t[np.maximum(src, 0)])
  made[:num_copies] += rng.normal(0.0, copy_noise, made[:num_copies].shape)
  made = np.clip(np.round(made), 0, 255).astype(np.uint8)
  kind = np.concatenate([np.zeros(num_copies), np.full(num_blend2, 2), np.full(num_blend3, 3),
                         np.full(num_novel, 4)]).astype(np.int64)
  return {
      "train": train,
      "samples": np.concatenate([made, novel]),
      "kind": kind,
      "source": np.concatenate([src, np.full((num_novel, 3), -1)]),
      "mix": np.concatenate([mix, np.zeros((num_novel, 3))]),
  }
