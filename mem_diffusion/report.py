"""Reports on disk: PNG image grids and the evaluation pictures (JSON: files.py).

matplotlib is imported inside the plotting functions, so that importing this
module stays fast. Figures are drawn on their own Agg canvas, not through
pyplot: they need no display, and the caller's backend (a notebook's inline
one) is left as it was.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np


def image_grid(images_u8: np.ndarray, ncols: int | None = None, pad: int = 1,
               pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 (N, H, W, C) images row by row (ncols default: ~square grid)."""
  images = np.asarray(images_u8)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"image_grid: expected uint8 (N, H, W, C), got {images.dtype} {images.shape}")
  if ncols is None:
    ncols = max(1, int(np.ceil(np.sqrt(images.shape[0]))))
  if ncols < 1:
    raise ValueError(f"image_grid: ncols={ncols} must be >= 1")
  n, h, w, c = images.shape
  ncols = min(ncols, max(n, 1))
  nrows = -(-n // ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def save_png(path: str, array: np.ndarray) -> None:
  """Saves a uint8 (H, W), (H, W, 1) or (H, W, 3) array as PNG."""
  from PIL import Image  # pylint: disable=import-outside-toplevel  # PIL stays lazy
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f"save_png(path, array): path must be a str, got {type(path).__name__}")
  a = np.asarray(array)
  if a.dtype != np.uint8:
    raise ValueError(f"save_png: expected uint8, got {a.dtype}")
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(a).save(path)


def agg_figure(**kwargs):
  """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend)."""
  # pylint: disable=import-outside-toplevel  # matplotlib stays lazy
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def _save_figure(fig, path: str, *, dpi: int = 150, pad: float = 1.08) -> None:
  """Lays out and writes (creating the folder) a figure; nothing holds it after."""
  fig.tight_layout(pad=pad)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)


def _pick_rows(per_sample: dict[str, np.ndarray], num_each: int, seed: int
               ) -> list[tuple[str, int]]:
  ratio = np.asarray(per_sample["ratio"])
  is_blend = np.asarray(per_sample.get("is_blend", np.zeros(ratio.shape, bool)))
  rho = np.asarray(per_sample.get("rho", np.ones(ratio.shape)))
  rows = [("most replicated", int(i)) for i in np.argsort(ratio, kind="stable")[:num_each]]
  blends = np.nonzero(is_blend)[0]
  rows += [("blend", int(i)) for i in blends[np.argsort(rho[blends], kind="stable")][:num_each]]
  rng = np.random.default_rng(seed)
  rows += [("random", int(i)) for i in rng.choice(ratio.size, min(num_each, ratio.size),
                                                   replace=False)]
  return rows


def nearest_neighbors_figure(samples: np.ndarray, train: np.ndarray,
                             per_sample: dict[str, np.ndarray], path: str, *,
                             num_each: int = 6, seed: int = 0, scale: float = 0.9) -> None:
  """Rows of sample | 1st NN | 2nd NN, annotated with d1/d2 (and rho, weights).

  Three groups: the samples with the smallest d1/d2 (most replicated), the
  flagged blends (smallest rho first), and random samples (`seed`).
  """
  rows = _pick_rows(per_sample, num_each, seed)
  nn1, nn2 = per_sample["nn1"], per_sample["nn2"]
  fig = agg_figure(figsize=(3 * scale * 1.6, len(rows) * scale * 1.15))
  axes = fig.subplots(len(rows), 3, squeeze=False)
  for r, (group, i) in enumerate(rows):
    ims = (samples[i], train[nn1[i]], train[nn2[i]])
    titles = (f"{group} #{i}", f"NN1 #{nn1[i]} d={per_sample['d1'][i]:.0f}",
              f"NN2 #{nn2[i]} d={per_sample['d2'][i]:.0f}")
    for c in range(3):
      ax = axes[r, c]
      ax.imshow(ims[c], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(titles[c], fontsize=5, pad=2)
    axes[r, 0].set_ylabel(row_label(per_sample, i), fontsize=5, rotation=0, ha="right",
                          va="center")
  _save_figure(fig, path, dpi=200, pad=0.3)


def _value(name: str, v: float) -> str:
  """'name=0.123', or 'name=-' where the value does not apply (NaN: not tested)."""
  return f"{name}={v:.3f}" if np.isfinite(v) else f"{name}=-"


def row_label(per_sample: dict[str, np.ndarray], i: int) -> str:
  """The annotation of sample i: d1/d2, rho and its verdict.

  rho is NaN for replicates (the blend test does not run on them), so it is
  shown as '-', not 'nan'. A copy of an image stored twice is a replicate only
  under the duplicate-aware rule; its flag says so.
  """
  lines = [_value("d1/d2", float(per_sample["ratio"][i]))]
  if "rho" in per_sample:
    lines.append(_value("rho", float(per_sample["rho"][i])))
  if per_sample["is_replicate"][i]:
    lines.append("REPLICATE")
  elif "is_replicate_dedup" in per_sample and per_sample["is_replicate_dedup"][i]:
    lines.append("REPLICATE (dedup)")
  elif "is_blend" in per_sample and per_sample["is_blend"][i]:
    lines.append("BLEND")
  return "\n".join(lines)


def ratio_histogram(ratios: np.ndarray, path: str, threshold: float = 1 / 3,
                    title: str = "nearest / second-nearest training distance") -> None:
  """Histogram of d1/d2 with the replicate threshold marked."""
  ratios = np.asarray(ratios, np.float64)
  fig = agg_figure(figsize=(4.5, 3))
  ax = fig.subplots()
  ax.hist(ratios, bins=np.linspace(0, 1, 51), color="tab:blue")
  ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:.3g}")
  frac = float(np.mean(ratios < threshold)) if ratios.size else 0.0
  ax.set_xlabel("d1 / d2")
  ax.set_ylabel("samples")
  ax.set_title(f"{title}\n{frac:.1%} below threshold (n={ratios.size})", fontsize=9)
  ax.legend(fontsize=8)
  _save_figure(fig, path)


def distance_cdf_figure(curves: Sequence[tuple[str, np.ndarray]], path: str, *,
                        xlabel: str = "L2 distance to the nearest training image",
                        title: str = "") -> None:
  """Empirical CDFs of several distance sets (e.g. samples vs held-out d1)."""
  fig = agg_figure(figsize=(4.5, 3))
  ax = fig.subplots()
  for name, values in curves:
    v = np.sort(np.asarray(values, np.float64))
    ax.step(v, np.arange(1, v.size + 1) / max(v.size, 1), where="post",
            label=f"{name} (median {np.median(v):.0f})" if v.size else name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("fraction")
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  _save_figure(fig, path)


def line_plot(x: Sequence[float], series: dict[str, Sequence[float]], path: str, *,
              errors: dict[str, Sequence[float]] | None = None, xlabel: str = "",
              ylabel: str = "", title: str = "", logx: bool = False,
              hlines: Sequence[float] = ()) -> None:
  """Small line plot with optional error bars (one line per series).

  `hlines` draws thresholds (e.g. the 0.9 / 0.1 replicate ratios of the
  capacity search) as dotted lines; `logx` for train-set sizes.
  """
  fig = agg_figure(figsize=(4.5, 3))
  ax = fig.subplots()
  for name, y in series.items():
    yerr = None if errors is None else errors.get(name)
    ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=name)
  for level in hlines:
    ax.axhline(level, color="grey", linestyle=":", linewidth=1)
  if logx:  # label the sizes that were run; log minor ticks overlap at this width
    ax.set_xscale("log")
    ax.set_xticks(list(x), [f"{v:g}" for v in x])
    ax.minorticks_off()
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  _save_figure(fig, path)


class Panel(NamedTuple):
  """One panel of `errorbar_figure`.

  `series` maps a line's label to its points (x, y, low, high): the bar runs
  from low to high, so it can show a range (min-max over seeds) as well as a
  symmetric spread; None for low/high draws no bar.
  """
  title: str
  ylabel: str
  series: dict[str, Sequence[tuple[float, float, float | None, float | None]]]
  ylim: tuple[float, float] | None = None
  hline: float | None = None


def _spaced_log_labels(positions: Sequence[float], values: Sequence[float],
                       min_log2_gap: float = 0.4) -> list[str]:
  """Tick labels on a log2 axis, blank where a label would overprint its left
  neighbour (96 and 120 are 0.32 octaves apart: at 5 inches they collide)."""
  labels, last = [], None
  for pos, value in zip(positions, values):
    if last is None or np.log2(pos) - np.log2(last) >= min_log2_gap:
      labels.append(f"{value:g}")
      last = pos
    else:
      labels.append("")
  return labels


def errorbar_figure(panels: Sequence[Panel], path: str, *, xlabel: str,
                    log_x: bool = False) -> None:
  """Panels side by side sharing x: lines with asymmetric error bars.

  On a log x axis an x of 0 (a no-dummy baseline) cannot be drawn; it sits at
  half the smallest nonzero x of the figure, and its tick says 0. Ticks label
  the x values that were run (log minor ticks overlap at this width).
  """
  fig = agg_figure(figsize=(5 * len(panels), 3.6))
  axes = fig.subplots(1, len(panels), squeeze=False)
  xs_all = {float(p[0]) for panel in panels for pts in panel.series.values() for p in pts}
  nonzero = [x for x in xs_all if x > 0]
  zero_at = (min(nonzero) / 2 if nonzero else 1.0) if log_x else 0.0
  place = lambda x: zero_at if x == 0 else x  # pylint: disable=unnecessary-lambda-assignment
  for ax, panel in zip(axes[0], panels):
    for label, pts in panel.series.items():
      pts = sorted(pts, key=lambda p: p[0])
      if not pts:
        continue
      y = np.array([p[1] for p in pts], np.float64)
      lo = np.array([p[1] if p[2] is None else p[2] for p in pts], np.float64)
      hi = np.array([p[1] if p[3] is None else p[3] for p in pts], np.float64)
      # A mean of equal values can land an ulp outside their min-max.
      ax.errorbar([place(p[0]) for p in pts], y, yerr=np.maximum(np.stack([y - lo, hi - y]), 0),
                  marker="o", capsize=3, label=label)
    if panel.hline is not None:
      ax.axhline(panel.hline, color="gray", lw=0.8, ls=":")
    if panel.ylim is not None:
      ax.set_ylim(*panel.ylim)
    if log_x:
      ax.set_xscale("log", base=2)
      ticks = sorted(xs_all)
      ax.set_xticks([place(x) for x in ticks], _spaced_log_labels([place(x) for x in ticks],
                                                                   ticks))
      ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize=9)
    if panel.series:
      ax.legend(fontsize=7)
  _save_figure(fig, path, dpi=130)
