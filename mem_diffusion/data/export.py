r"""Exports a config's fully mixed train set for audit, and preview grids.

  python -m mem_diffusion.data.export --config=configs/default.py \
      --config.data.dataset=mondrian --config.data.dummy_kind=gm \
      --config.data.num_dummy=6000 --out /tmp/mo_gm.npz --preview /tmp/preview

writes
- FILE.npz: `arr_0` uint8 NHWC images, `arr_1` int32 labels, in train-set row
  order (improved-diffusion's npz layout, readable by any tool);
- FILE.json (next to it): the manifest (source, index, label of every image,
  the recorded CIFAR split, the data config);
- with --preview DIR: DIR/<prefix><source>.png, a grid of the first images of
  every source; --hybrid_illustration adds <prefix>hybrid_mondrian_illustration.png
  (Mondrian low-pass + GM high-pass, which needs no CIFAR), and
  --hybrid_readings adds <prefix>hybrid_readings.png (the same sources mixed
  under each reading of data.hybrid_cutoff, with the masks).

The printed summary gives, for the config's image size and cutoff, the
fraction of frequency bins the car supplies under each `data.hybrid_mask`.

The npz is a zip written with fixed timestamps, so the same config gives the
same bytes (np.savez stamps the current time into the archive).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from mem_diffusion import files
from mem_diffusion import report
from mem_diffusion.errors import InputError
from mem_diffusion.data import generators, mondrian, train_set as train_set_lib

_FLAGS = {}


def _define_flags() -> None:
  """Defines the CLI flags; only when run as a script, so that importing this
  module next to main.py (which also defines --config) cannot collide."""
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  _FLAGS["out"] = flags.DEFINE_string(
      "out", None, "Output .npz (the manifest goes next to it as .json).")
  _FLAGS["preview"] = flags.DEFINE_string(
      "preview", None, "Directory for one PNG grid per source.")
  _FLAGS["prefix"] = flags.DEFINE_string("preview_prefix", "", "File name prefix of the grids.")
  _FLAGS["count"] = flags.DEFINE_integer("preview_count", 64, "Images per grid.")
  _FLAGS["scale"] = flags.DEFINE_integer(
      "preview_scale", 2, "Nearest-neighbour upscaling of grids.")
  _FLAGS["illustrate"] = flags.DEFINE_bool(
      "hybrid_illustration", False,
      "Also write a (Mondrian | GM | hybrid) triplet grid that shows the Fourier "
      "mixing without CIFAR (an illustration, not a training set).")
  _FLAGS["readings"] = flags.DEFINE_bool(
      "hybrid_readings", False,
      "Also write one Mondrian/GM hybrid per data.hybrid_mask reading, with the "
      "masks, as <prefix>hybrid_readings.png.")


_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str, *arrays: np.ndarray) -> None:
  """np.savez-compatible archive (arr_0, arr_1, ...) with fixed timestamps."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
    for k, a in enumerate(arrays):
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
      info = zipfile.ZipInfo(f"arr_{k}.npy", date_time=_FIXED_TIME)
      info.external_attr = 0o644 << 16
      zf.writestr(info, buf.getvalue())
  os.replace(tmp, path)


def manifest_path(npz_path: str) -> str:
  return os.path.splitext(npz_path)[0] + ".json"


def export(data_cfg, out: str) -> train_set_lib.TrainSet:
  ts = train_set_lib.build_train_set(data_cfg)
  write_npz(out, ts.images, ts.labels)
  train_set_lib.write_manifest(ts, manifest_path(out), data_cfg)
  return ts


def _save_grid(path: str, images: np.ndarray, ncols: int, scale: int) -> None:
  grid = report.image_grid(images, ncols=ncols)
  if scale > 1:
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  report.save_png(path, grid)


def write_previews(ts: train_set_lib.TrainSet, directory: str, *, prefix: str = "",
                   count: int = 64, scale: int = 2) -> list[str]:
  """One grid per source (first `count` images of it, train-set order)."""
  paths = []
  for source in dict.fromkeys(ts.sources.tolist()):  # first-seen order
    rows = np.flatnonzero(ts.sources == source)[:count]
    path = os.path.join(directory, f"{prefix}{source}.png")
    _save_grid(path, ts.images[rows], int(np.ceil(np.sqrt(len(rows)))), scale)
    paths.append(path)
  return paths


def write_hybrid_illustration(data_cfg, directory: str, *, prefix: str = "",
                              count: int = 24, scale: int = 2) -> str:
  """Rows of (Mondrian, GM, hybrid) triplets with the config's cutoff/seed."""
  size, seed = data_cfg.image_size, data_cfg.seed
  ids = np.arange(count)
  low = mondrian.mondrian_images(seed, ids, size)
  high = generators.hybrid_gm_sources(seed, ids, size)
  mixed = generators.hybrid_images(seed, ids, low, data_cfg.hybrid_cutoff,
                                   mask=data_cfg.hybrid_mask)
  triplets = np.stack([low, high, mixed], axis=1).reshape(-1, size, size, 3)
  path = os.path.join(directory, f"{prefix}hybrid_mondrian_illustration.png")
  _save_grid(path, triplets, 12, scale)
  return path


def hybrid_mask_bins(image_size: int, cutoff: float) -> dict[str, dict[str, float]]:
  """Frequency bins (weights summed) and their fraction that the car supplies, per reading."""
  out = {}
  for kind in generators.HYBRID_MASKS:
    bins = float(generators.lowpass_mask(image_size, cutoff, kind).sum())
    out[kind] = {"bins": round(bins, 6), "fraction": round(bins / image_size ** 2, 6)}
  return out


def write_hybrid_readings(data_cfg, directory: str, *, prefix: str = "", count: int = 3) -> str:
  """One figure: `count` Mondrian/GM pairs mixed under every reading, masks on top.

  Mondrian images stand in for the cars (no CIFAR needed); the seed, image
  size and cutoff are the config's.
  """
  size, seed, cutoff = data_cfg.image_size, data_cfg.seed, data_cfg.hybrid_cutoff
  ids = np.arange(count)
  low = mondrian.mondrian_images(seed, ids, size)
  high = generators.hybrid_gm_sources(seed, ids, size)
  kinds = generators.HYBRID_MASKS
  mixed = [generators.hybrid_images(seed, ids, low, cutoff, mask=k) for k in kinds]
  bins = hybrid_mask_bins(size, cutoff)
  cols = 2 + len(kinds)
  fig = report.agg_figure(figsize=(1.45 * cols, 1.45 * (count + 1)))
  axes = fig.subplots(count + 1, cols, squeeze=False)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in axes[0, :2]:
    ax.axis("off")
  axes[0, 0].text(0.5, 0.5, f"{size}x{size}, cutoff {cutoff:g}\nmask: car's weight\n"
                  "(k = 0 at centre)", ha="center", va="center", fontsize=6)
  for c, kind in enumerate(kinds, start=2):
    mask = np.fft.fftshift(generators.lowpass_mask(size, cutoff, kind))
    axes[0, c].imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    default = " (default)" if kind == generators.DEFAULT_HYBRID_MASK else ""
    axes[0, c].set_title(f"{kind}{default}\n{bins[kind]['bins']:g} bins "
                         f"({bins[kind]['fraction']:.1%})", fontsize=6)
  for r in range(count):
    row = [low[r], high[r]] + [m[r] for m in mixed]
    for c, im in enumerate(row):
      axes[r + 1, c].imshow(im, interpolation="nearest")
    axes[r + 1, 0].set_ylabel(f"#{r}", fontsize=6)
  axes[1, 0].set_title("low: Mondrian", fontsize=6)
  axes[1, 1].set_title("high: GM", fontsize=6)
  for c in range(2, cols):
    axes[1, c].set_title("hybrid", fontsize=6)
  fig.tight_layout(pad=0.3)
  path = os.path.join(directory, f"{prefix}hybrid_readings.png")
  os.makedirs(directory, exist_ok=True)
  fig.savefig(path, dpi=160)
  return path


def _is_manifest(path: str) -> bool:
  """True for a JSON file this command wrote (it may be replaced); anything
  else at the manifest's path is the user's and must survive."""
  try:
    with open(path) as f:
      m = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(m, dict) and {"images", "data_config", "num_classes"} <= set(m)


def check_outputs(out: str | None, preview: str | None, count: int, scale: int) -> None:
  """Every path the command will write, refused before the train set is built.

  The manifest is written next to --out under another name, so it is checked
  like --out itself: a user's own FILE.json there is never replaced.
  """
  if count < 1 or scale < 1:
    raise InputError(f"--preview_count ({count}) and --preview_scale ({scale}) must be >= 1")
  if out:
    files.check_output_path(out, create_parent=True)
    if not out.endswith(".npz"):  # a README.md given by mistake was replaced by an npz
      raise InputError(f"--out {out!r}: give a file ending in .npz (the format written)")
    if os.path.isfile(out) and not zipfile.is_zipfile(out):
      raise InputError(f"--out {out!r} exists and is not an npz file; move it or choose "
                       "another --out")
    manifest = manifest_path(out)
    if os.path.abspath(manifest) == os.path.abspath(out):
      raise InputError(f"--out {out!r}: the manifest would be written over it; "
                       "give a file ending in .npz")
    files.check_output_path(manifest, "the manifest", create_parent=True)
    if os.path.exists(manifest) and not _is_manifest(manifest):
      raise InputError(f"--out {out!r} would overwrite {manifest}, which is not a manifest "
                       "written by this command; move it or choose another --out")
  if preview:
    probe = os.path.abspath(preview)
    while not os.path.exists(probe):
      probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
      raise InputError(f"--preview {preview!r}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
      raise InputError(f"--preview {preview!r}: cannot write in {probe}")


def _main(argv):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _FLAGS["config"].value
  if config is None:
    raise InputError("--config is required")
  if not (_FLAGS["out"].value or _FLAGS["preview"].value):
    raise InputError("give --out FILE.npz and/or --preview DIR")
  if (_FLAGS["illustrate"].value or _FLAGS["readings"].value) and not _FLAGS["preview"].value:
    raise InputError("--hybrid_illustration and --hybrid_readings write into --preview DIR")
  check_outputs(_FLAGS["out"].value, _FLAGS["preview"].value, _FLAGS["count"].value,
                _FLAGS["scale"].value)  # before the build
  data_cfg = config.data
  if _FLAGS["out"].value:
    ts = export(data_cfg, _FLAGS["out"].value)
  else:
    ts = train_set_lib.build_train_set(data_cfg)
  written = [_FLAGS["out"].value, manifest_path(_FLAGS["out"].value)] if _FLAGS["out"].value else []
  if _FLAGS["preview"].value:
    written += write_previews(ts, _FLAGS["preview"].value, prefix=_FLAGS["prefix"].value,
                              count=_FLAGS["count"].value, scale=_FLAGS["scale"].value)
    if _FLAGS["illustrate"].value:
      written.append(write_hybrid_illustration(data_cfg, _FLAGS["preview"].value,
                                               prefix=_FLAGS["prefix"].value, scale=_FLAGS["scale"].value))
    if _FLAGS["readings"].value:
      written.append(write_hybrid_readings(data_cfg, _FLAGS["preview"].value,
                                           prefix=_FLAGS["prefix"].value))
  counts = {s: int(n) for s, n in zip(*np.unique(ts.sources, return_counts=True))}
  hybrid = {"hybrid_mask": data_cfg.hybrid_mask, "hybrid_cutoff": data_cfg.hybrid_cutoff,
            "bins_kept": hybrid_mask_bins(data_cfg.image_size, data_cfg.hybrid_cutoff)}
  print(json.dumps({"num_images": len(ts), "num_classes": ts.num_classes,
                    "sources": counts, "hybrid_masks": hybrid, "written": written}))


def main(argv):
  """_main with every documented failure (bad config, missing CIFAR, full disk) as one
  error line and its exit code."""
  from mem_diffusion.run import cli, runtime  # pylint: disable=g-import-not-at-top,g-multiple-import  # JAX loads after flag parsing
  runtime.set_verbosity(False)
  runtime.quiet_tensorflow()
  cli.call(lambda: _main(argv))


if __name__ == "__main__":
  _define_flags()
  from mem_diffusion.run import cli  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli.parse_flags)
