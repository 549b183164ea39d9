"""Sample quality next to every replicate ratio, with nothing to download.

Why: fewer replicates can mean "the model generalizes" or just "the model
draws worse images of the class" (dummy data dilutes the real class's
updates). Two figures, both against held-out real images of the class
(images the model never saw):

(a) Distance to the training set. d1 = L2 distance from an image to its
    nearest training image (exact, `replicates.nearest_k`). Held-out real
    images show what "a new image of this class" looks like from the train
    set. A memorizing model has many samples far closer than any held-out
    image (`frac_samples_below_heldout_p05` >> 0.05); a model that draws
    blurry or off-class images sits farther (median_ratio > 1, and a large
    KS statistic with most mass to the right). A generalizing model of good
    quality matches the held-out distribution: fraction ~0.05, median ratio
    ~1, small KS statistic.

(b) Frechet distance (FD) and kernel distance (KID, unbiased MMD^2 with the
    cubic polynomial kernel) in a hand-built feature space, "multiscale-v1":
    colour statistics, 4x4 colour layout, Haar wavelet energies (per level,
    per orientation, luminance and two opponent colour channels, plus their
    2x2 spatial layout), wavelet kurtosis, and gradient-orientation
    histograms at two scales. Why not Inception: it needs a download and its
    numbers depend on the TF/PyTorch port. Why not a random conv net: its
    outputs change with GPU matmul precision (TF32/bf16). These features are
    float64 NumPy, identical on every machine, cheap (ms per 1000 images),
    and react to what matters here: blur removes fine-scale wavelet energy
    and edge orientations, noise adds fine-scale energy and Gaussianises the
    coefficients, colour shifts move the colour statistics. Features are
    z-scored with the held-out set's mean/std, so FD is in "squared standard
    deviations" summed over ~170 dimensions. Read FD/KID relative to the
    noise floor reported next to them (`*_heldout_split`: two random halves
    of the held-out set): a good model is a small multiple of the floor. The
    numbers are comparable between runs that use the same held-out set, not
    to published FID values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mem_diffusion import npz_io
from mem_diffusion.analysis import replicates
from mem_diffusion import report

FEATURE_NAME = "multiscale-v1"


# ----------------------------------------------------------------------------
# Features.

def _haar(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """One orthonormal Haar level on (N, H, W) with even H, W: (LL, LH, HL, HH)."""
  a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
  c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
  return (a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def _orientation_hist(y: np.ndarray, bins: int = 8) -> np.ndarray:
  gy, gx = np.gradient(y, axis=(1, 2))
  mag = np.hypot(gx, gy)
  ang = np.mod(np.arctan2(gy, gx), np.pi)  # orientation, not direction
  idx = np.minimum((ang / np.pi * bins).astype(int), bins - 1)
  hist = np.stack([(mag * (idx == b)).sum(axis=(1, 2)) for b in range(bins)], axis=1)
  total = hist.sum(axis=1, keepdims=True)
  return np.concatenate([hist / np.maximum(total, 1e-12),
                         np.log(total / y[0].size + 1e-4)], axis=1)


def features(images_u8: np.ndarray, batch: int = 512) -> np.ndarray:
  """Deterministic multi-scale features, float64 (N, F)."""
  images = npz_io.check_images(images_u8, "images")
  out = [_features(images[s:s + batch]) for s in range(0, images.shape[0], batch)]
  return np.concatenate(out)


def _features(images: np.ndarray) -> np.ndarray:
  n, h, w, _ = images.shape
  x = images.astype(np.float64) / 255.0
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  chans = [(r + g + b) / 3, (r - g) / 2, (r + g) / 2 - b]  # luminance, two opponent axes
  feats = [x.mean(axis=(1, 2)), x.std(axis=(1, 2))]
  # Coarse layout of each channel (4x4 block means).
  bh, bw = max(h // 4, 1), max(w // 4, 1)
  for c in chans:
    cc = c[:, :bh * 4, :bw * 4].reshape(n, 4, bh, 4, bw).mean(axis=(2, 4))
    feats.append(cc.reshape(n, 16))
  # Wavelet energies per level and orientation (+ spatial layout, kurtosis).
  for ci, c in enumerate(chans):
    ll = c
    for level in range(3):
      if ll.shape[1] < 2 or ll.shape[2] < 2 or ll.shape[1] % 2 or ll.shape[2] % 2:
        break
      ll, *details = _haar(ll)
      for band in details:
        energy = (band ** 2).mean(axis=(1, 2))
        feats.append(np.log(energy + 1e-6)[:, None])
        if ci == 0 and level < 2:
          hh, ww = band.shape[1] // 2, band.shape[2] // 2
          quads = [band[:, :hh, :ww], band[:, :hh, ww:], band[:, hh:, :ww], band[:, hh:, ww:]]
          feats.append(np.stack([np.log((q ** 2).mean(axis=(1, 2)) + 1e-6) for q in quads], 1))
        if ci == 0:
          m2 = (band ** 2).mean(axis=(1, 2))
          m4 = (band ** 4).mean(axis=(1, 2))
          feats.append(np.log(m4 / np.maximum(m2 * m2, 1e-12) + 1e-3)[:, None])
  y = chans[0]
  feats.append(_orientation_hist(y))
  if h % 2 == 0 and w % 2 == 0:
    feats.append(_orientation_hist(_haar(y)[0] / 2))
  return np.concatenate(feats, axis=1)


# ----------------------------------------------------------------------------
# Distances between feature distributions.

def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
  vals, vecs = np.linalg.eigh((m + m.T) / 2)
  return (vecs * np.sqrt(np.maximum(vals, 0.0))) @ vecs.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
  """|mu_x - mu_y|^2 + tr(Sx + Sy - 2 (Sx^1/2 Sy Sx^1/2)^1/2) of two feature sets."""
  mx, my = x.mean(0), y.mean(0)
  sx, sy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
  root = _sqrtm_psd(sx)
  cross = np.linalg.eigvalsh(root @ sy @ root)
  tr_cross = float(np.sum(np.sqrt(np.maximum(cross, 0.0))))
  return float(max(np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2 * tr_cross, 0.0))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  d = x.shape[1]
  kxx = (x @ x.T / d + 1.0) ** 3
  kyy = (y @ y.T / d + 1.0) ** 3
  kxy = (x @ y.T / d + 1.0) ** 3
  m, n = x.shape[0], y.shape[0]
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
               - 2.0 * kxy.mean())


def kernel_distance(x: np.ndarray, y: np.ndarray, *, subset: int = 1000, num_subsets: int = 20,
                    seed: int = 0) -> tuple[float, float]:
  """KID: unbiased MMD^2 (cubic polynomial kernel); mean and std over subsets.

  Sets of at most `subset` images are compared whole (std 0).
  """
  if x.shape[0] < 2 or y.shape[0] < 2:
    raise ValueError("kernel_distance needs at least 2 images per set")
  if x.shape[0] <= subset and y.shape[0] <= subset:
    return _mmd2_unbiased(x, y), 0.0
  rng = np.random.default_rng(seed)
  m = min(subset, x.shape[0], y.shape[0])
  vals = [_mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)],
                         y[rng.choice(y.shape[0], m, replace=False)]) for _ in range(num_subsets)]
  return float(np.mean(vals)), float(np.std(vals))


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value."""
  a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
  grid = np.concatenate([a, b])
  stat = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                             - np.searchsorted(b, grid, side="right") / b.size)))
  en = math.sqrt(a.size * b.size / (a.size + b.size))
  lam = (en + 0.12 + 0.11 / en) * stat
  if lam < 1e-3:
    return stat, 1.0
  p = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
  return stat, float(min(max(p, 0.0), 1.0))


# ----------------------------------------------------------------------------
# The report.

def quality_report(samples: np.ndarray, heldout: np.ndarray, train: np.ndarray, *,
                   figure_path: str | None = None, chunk_size: int | None = None,
                   seed: int = 0) -> dict[str, Any]:
  """Quality of uint8 samples against held-out real images of the same class.

  Args:
    samples, heldout, train: uint8 (N, H, W, 3) sets of the same image size;
      heldout must not overlap the training set.
    figure_path: optional PNG of the two d1 distributions (empirical CDFs).
    seed: the random split of the held-out set for the noise floor.

  Returns a JSON-ready dict; see the module docstring for how to read it.
  """
  samples = npz_io.check_images(samples, "samples")
  heldout = npz_io.check_images(heldout, "heldout")
  train = npz_io.check_images(train, "train")
  if not samples.shape[1:] == heldout.shape[1:] == train.shape[1:]:
    raise ValueError(f"image sizes differ: samples {samples.shape[1:]}, heldout "
                     f"{heldout.shape[1:]}, train {train.shape[1:]}")
  if heldout.shape[0] < 4 or samples.shape[0] < 2:
    raise ValueError("quality_report needs >= 4 held-out images and >= 2 samples")
  _, sq_s = replicates.nearest_k(samples, train, 1, chunk_size=chunk_size)
  _, sq_h = replicates.nearest_k(heldout, train, 1, chunk_size=chunk_size)
  d1_s, d1_h = np.sqrt(sq_s[:, 0].astype(np.float64)), np.sqrt(sq_h[:, 0].astype(np.float64))
  ks, ks_p = ks_two_sample(d1_s, d1_h)
  p05 = float(np.quantile(d1_h, 0.05))

  f_s, f_h = features(samples), features(heldout)
  mu, sd = f_h.mean(0), f_h.std(0)
  sd = np.where(sd > 1e-8, sd, 1.0)
  z_s, z_h = (f_s - mu) / sd, (f_h - mu) / sd
  perm = np.random.default_rng(seed).permutation(heldout.shape[0])
  half_a, half_b = z_h[perm[: perm.size // 2]], z_h[perm[perm.size // 2:]]
  kid, kid_std = kernel_distance(z_s, z_h)
  kid_floor, _ = kernel_distance(half_a, half_b)
  result = {
      "num_samples": int(samples.shape[0]),
      "num_heldout": int(heldout.shape[0]),
      "d1": {
          "samples": replicates.quantiles(d1_s),
          "heldout": replicates.quantiles(d1_h),
          "median_ratio": float(np.median(d1_s) / max(np.median(d1_h), 1e-12)),
          "heldout_p05": p05,
          "frac_samples_below_heldout_p05": float(np.mean(d1_s < p05)),
          "ks_statistic": ks,
          "ks_pvalue": ks_p,
      },
      "features": {
          "name": FEATURE_NAME,
          "dim": int(f_s.shape[1]),
          "frechet": frechet_distance(z_s, z_h),
          "frechet_heldout_split": frechet_distance(half_a, half_b),
          "kid": kid,
          "kid_std": kid_std,
          "kid_heldout_split": kid_floor,
      },
  }
  if figure_path:
    report.distance_cdf_figure(
        [("samples", d1_s), ("held-out real", d1_h)], figure_path,
        title=f"KS {ks:.3f}; {result['d1']['frac_samples_below_heldout_p05']:.1%} of samples "
              f"below held-out 5th pct")
  return result
