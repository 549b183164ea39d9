"""Runs a list of experiments over several seeds and draws the study's figure.

  python -m mem_diffusion.sweep --root=runs/study --seeds=0,1,2 \\
      --configs=configs/cars_2k.py,configs/gm_1k.py,configs/gm_2k.py,configs/gm_4k.py

Each (config, seed) runs train -> sample -> eval in `<root>/<name>/seed<k>`,
one after another in this process. Every stage resumes or is skipped when its
outputs are complete, so rerunning the same command after a crash or a
preemption continues where it stopped. `--set key=value` overrides apply to
every config (e.g. `--set training.num_steps=2000`).

Outputs in <root>: `summary.csv` (one row per run), `figure.png` (replicate
ratio against the number of dummy images, one line per dummy kind, the
baseline without dummies as a band, error bars = standard deviation over
seeds; beside it the quality figure, the samples' median nearest-training
distance relative to held-out real images), and `summary.json`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", None, "Config files, each optionally with ':arg'.")
flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) to run for every config.")
flags.DEFINE_string("root", None, "Directory holding one workdir per run.")
flags.DEFINE_multi_string("set", [], "key=value override for every config, e.g. training.num_steps=500.")
flags.DEFINE_string("x_key", "data.num_dummy", "Config key on the figure's x axis.")
flags.DEFINE_string("group_key", "data.dummy_kind", "Config key that names the figure's lines.")

COLUMNS = ("name", "config", "seed", "dataset", "dummy_kind", "num_dummy", "num_original",
           "sampling", "train_step", "final_loss", "num_samples", "replicate_ratio",
           "replicate_ci_low", "replicate_ci_high", "blend_ratio", "d1_median_ratio",
           "frac_below_heldout_p05", "kid", "kid_heldout_split", "workdir")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'path/to/file.py[:arg]' -> get_config(arg)."""
  from mem_diffusion import convert  # pylint: disable=g-import-not-at-top
  return convert.load_config(spec)


def get_key(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """'a.b=value' with the value parsed to the type of the existing key."""
  key, sep, raw = assignment.partition("=")
  if not sep:
    raise ValueError(f"--set {assignment!r}: expected key=value")
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise ValueError(f"--set {assignment!r}: no config section {p!r}")
    node = node[p]
  if leaf not in node:
    raise ValueError(f"--set {assignment!r}: unknown config key {key!r}")
  old = node[leaf]
  if isinstance(old, bool):
    value: Any = raw.lower() in ("1", "true", "yes")
  elif isinstance(old, int):
    value = int(raw)
  elif isinstance(old, float):
    value = float(raw)
  elif isinstance(old, tuple):
    value = tuple(type(old[0])(v) if old else int(v) for v in raw.split(",") if v)
  else:
    value = raw
  node[leaf] = value


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """train -> sample -> eval, each resumed or skipped when complete."""
  from mem_diffusion import evaluate  # pylint: disable=g-import-not-at-top
  from mem_diffusion import sampling  # pylint: disable=g-import-not-at-top
  from mem_diffusion import train  # pylint: disable=g-import-not-at-top
  report_path = os.path.join(workdir, "eval", "report.json")
  if os.path.exists(report_path):
    with open(report_path) as f:
      return json.load(f)
  summary_path = os.path.join(workdir, "train_summary.json")
  trained = False
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      trained = json.load(f).get("step") == config.training.num_steps
  if not trained:
    train.train_and_evaluate(config, workdir)
  if not os.path.exists(sampling.samples_path(config, workdir)):
    sampling.sample_to_workdir(config, workdir)
  return evaluate.evaluate_workdir(config, workdir)


def row(spec: str, config: ml_collections.ConfigDict, seed: int, workdir: str,
        report: dict[str, Any]) -> dict[str, Any]:
  q = report.get("quality", {})
  ci = report.get("replicate_ci95", [None, None])
  return {
      "name": config.name, "config": spec, "seed": seed, "dataset": config.data.dataset,
      "dummy_kind": config.data.dummy_kind or "none", "num_dummy": config.data.num_dummy,
      "num_original": config.data.num_original, "sampling": config.data.sampling,
      "train_step": report.get("train_step"), "final_loss": report.get("final_loss"),
      "num_samples": report.get("num_samples"), "replicate_ratio": report.get("replicate_ratio"),
      "replicate_ci_low": ci[0], "replicate_ci_high": ci[1],
      "blend_ratio": report.get("blend_ratio"),
      "d1_median_ratio": q.get("d1", {}).get("median_ratio"),
      "frac_below_heldout_p05": q.get("d1", {}).get("frac_samples_below_heldout_p05"),
      "kid": q.get("features", {}).get("kid"),
      "kid_heldout_split": q.get("features", {}).get("kid_heldout_split"),
      "workdir": workdir,
  }


def aggregate(rows: Sequence[dict[str, Any]], x_key: str = "num_dummy",
              group_key: str = "dummy_kind") -> dict[str, dict[float, dict[str, float]]]:
  """{group: {x: {mean, std, n, quality_mean, quality_std}}} over seeds."""
  out: dict[str, dict[float, list]] = {}
  for r in rows:
    out.setdefault(str(r[group_key]), {}).setdefault(float(r[x_key]), []).append(r)
  agg = {}
  for g, by_x in out.items():
    agg[g] = {}
    for x, rs in sorted(by_x.items()):
      ratios = np.array([r["replicate_ratio"] for r in rs], np.float64)
      qual = np.array([np.nan if r["d1_median_ratio"] is None else r["d1_median_ratio"]
                       for r in rs], np.float64)
      agg[g][x] = {"mean": float(ratios.mean()), "std": float(ratios.std()),
                   "n": len(rs), "quality_mean": float(np.nanmean(qual)) if np.isfinite(qual).any() else None,
                   "quality_std": float(np.nanstd(qual)) if np.isfinite(qual).any() else None}
  return agg


def study_figure(agg: dict[str, dict[float, dict[str, float]]], path: str, *,
                 xlabel: str = "number of dummy images", baseline: str = "none") -> None:
  """Replicate ratio vs x, one line per group; quality beside it."""
  from mem_diffusion import report  # pylint: disable=g-import-not-at-top
  plt = report._pyplot()  # pylint: disable=protected-access
  fig, (ax, axq) = plt.subplots(1, 2, figsize=(9, 3.4))
  xs_all = sorted({x for g in agg.values() for x in g})
  for name, by_x in sorted(agg.items()):
    xs = sorted(by_x)
    m = [by_x[x]["mean"] for x in xs]
    s = [by_x[x]["std"] for x in xs]
    qm = [by_x[x]["quality_mean"] for x in xs]
    qs = [by_x[x]["quality_std"] for x in xs]
    if name == baseline and len(xs) == 1 and len(xs_all) > 1:
      for a, mean, std in ((ax, m[0], s[0]), (axq, qm[0], qs[0])):
        if mean is None:
          continue
        a.axhline(mean, color="k", ls="--", lw=1, label=f"no dummies (baseline)")
        a.axhspan(mean - std, mean + std, color="k", alpha=0.1)
      continue
    ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=name)
    if all(v is not None for v in qm):
      axq.errorbar(xs, qm, yerr=qs, marker="o", capsize=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("replicate ratio (d1/d2 < 1/3)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("memorization", fontsize=9)
  axq.set_xlabel(xlabel)
  axq.set_ylabel("median d1: samples / held-out reals")
  axq.axhline(1.0, color="gray", lw=0.8, ls=":")
  axq.set_title("quality (1 = as far from train as real images)", fontsize=9)
  for a in (ax, axq):
    a.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150)
  plt.close(fig)


def write_outputs(rows: Sequence[dict[str, Any]], root: str, *, x_key: str, group_key: str) -> None:
  from mem_diffusion import report  # pylint: disable=g-import-not-at-top
  os.makedirs(root, exist_ok=True)
  tmp = os.path.join(root, "summary.csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow(r)
  os.replace(tmp, os.path.join(root, "summary.csv"))
  short_x, short_g = x_key.split(".")[-1], group_key.split(".")[-1]
  agg = aggregate(rows, short_x, short_g)
  report.write_json(os.path.join(root, "summary.json"), {"rows": list(rows), "aggregate": agg})
  study_figure(agg, os.path.join(root, "figure.png"), xlabel=short_x.replace("_", " "))


def sweep(specs: Sequence[str], seeds: Sequence[int], root: str,
          overrides: Sequence[str] = (), *, x_key: str = "data.num_dummy",
          group_key: str = "data.dummy_kind") -> list[dict[str, Any]]:
  """Runs every (spec, seed); returns the summary rows (also written to root)."""
  from mem_diffusion import validate  # pylint: disable=g-import-not-at-top
  # Build and validate every config first: a typo in the 7th config must not
  # surface after six hours of training.
  plan = []
  for spec in specs:
    for seed in seeds:
      config = load_config(spec)
      for o in overrides:
        apply_override(config, o)
      config.seed = int(seed)
      validate.validate_config(config)
      if x_key.split(".")[-1] not in COLUMNS or group_key.split(".")[-1] not in COLUMNS:
        raise ValueError(f"--x_key/--group_key must name summary columns ({', '.join(COLUMNS)})")
      plan.append((spec, int(seed), config, os.path.join(root, config.name, f"seed{seed}")))
  rows = []
  for i, (spec, seed, config, workdir) in enumerate(plan):
    logging.info("sweep run %d/%d: %s seed %d -> %s", i + 1, len(plan), spec, seed, workdir)
    report = run_stages(config, workdir)
    rows.append(row(spec, config, seed, workdir, report))
    write_outputs(rows, root, x_key=x_key, group_key=group_key)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.configs or not FLAGS.root:
    print("error: --configs and --root are required", file=sys.stderr)
    sys.exit(2)
  try:
    seeds = [int(s) for s in FLAGS.seeds]
    rows = sweep(FLAGS.configs, seeds, FLAGS.root, FLAGS.set,
                 x_key=FLAGS.x_key, group_key=FLAGS.group_key)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)
  for r in rows:
    print(f"{r['name']:<32} seed {r['seed']}: replicate ratio {r['replicate_ratio']:.3f}")


if __name__ == "__main__":
  app.run(main)
