"""Runs a list of experiments over several seeds and draws the study's figures.

  python -m mem_diffusion.sweep --root=runs/study --seeds=0,1,2 \\
      --configs=configs/cars_2k.py,configs/gm_1k.py,configs/gm_2k.py,configs/gm_4k.py
  python -m mem_diffusion.sweep --preset=toy --root=runs/toy --seeds=0,1,2

Each (config, seed) runs train -> sample -> eval in `<root>/<name>/seed<k>`,
one after another in this process. Every stage resumes or is skipped when its
outputs are complete, so rerunning the same command after a crash or a
preemption continues where it stopped; a finished run whose report no longer
matches the config (e.g. `--set training.num_steps=...` changed) is sampled
and evaluated again after training resumes. `--set key=value` overrides apply
to every config.

Outputs in <root>, rewritten after every run so a partial sweep is readable:
- `summary.csv`: one row per run (replicate ratio, its CI, the quality figures).
- `summary.json`: the rows and the per-config aggregate (mean/std over seeds).
- `summary.md`: the aggregate as a Markdown table (ratio next to quality).
- `capacity.png`: replicate ratio against the train-set size for the runs
  without dummy data (drawn when there are >= 2 sizes).
- `dummies.png`: replicate ratio against the number of dummy images, one line
  per (dummy kind, batch sampling), each starting at the same-size run
  without dummies (x = 0).
Both figures have the quality figure beside the ratio: the samples' median
nearest-training distance relative to held-out real images (1 = as far from
the train set as new real images; >> 1 = worse images, not generalization).

Compiled programs are kept in a persistent JAX cache (`<root>/jax_cache` by
default): runs that differ only in seed or train set compile the same train
step, which on CPU otherwise costs as much as a toy run's training.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

# The CPU study (issue 6): (a) capacity curve, (b) a memorized set plus GM
# dummies with 'uniform' and 'balanced' batches, (c) geometric dummies.
# See configs/toy_capacity.py and configs/toy_dummies.py.
TOY_SIZES = (16, 64, 256, 1024)
TOY_DUMMY_COUNTS = (16, 64, 256)
PRESETS = {
    "toy": tuple(f"configs/toy_capacity.py:{n}" for n in TOY_SIZES) + tuple(
        f"configs/toy_dummies.py:kind={kind},m={m},sampling={s}"
        for kind, s in (("gm", "uniform"), ("gm", "balanced"), ("geometric", "balanced"))
        for m in TOY_DUMMY_COUNTS),
}

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("configs", None, "Config files, each optionally with ':arg', "
                          "comma-separated (commas inside an ':arg' are kept: a new "
                          "config starts at each item naming a .py file); repeatable.")
flags.DEFINE_enum("preset", None, sorted(PRESETS), "A named list of configs (instead of --configs).")
flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) to run for every config.")
flags.DEFINE_string("root", None, "Directory holding one workdir per run.")
flags.DEFINE_multi_string("set", [], "key=value override for every config, e.g. training.num_steps=500.")
flags.DEFINE_string("compile_cache", "", "Persistent JAX compilation cache ('' = <root>/jax_cache, "
                    "'none' = off).")

COLUMNS = ("name", "config", "seed", "dataset", "dummy_kind", "num_dummy", "num_original",
           "sampling", "conditional", "train_step", "final_loss", "num_samples",
           "replicate_ratio", "replicate_ci_low", "replicate_ci_high", "blend_ratio",
           "d1_median_ratio", "frac_below_heldout_p05", "frechet", "frechet_heldout_split",
           "kid", "kid_heldout_split", "run_seconds", "workdir")
QUALITY_KEYS = ("d1_median_ratio", "frac_below_heldout_p05", "frechet", "kid")


def split_specs(values: Sequence[str]) -> list[str]:
  """['a.py,b.py:1000,tiny', 'c.py'] -> ['a.py', 'b.py:1000,tiny', 'c.py'].

  Config arguments contain commas themselves, so an item starts a new spec
  only when it names a .py file.
  """
  specs: list[str] = []
  for value in values:
    for item in value.split(","):
      item = item.strip()
      if not item:
        continue
      if ".py" in item.split(":", 1)[0] or not specs:
        specs.append(item)
      else:
        specs[-1] += "," + item
  return specs


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'path/to/file.py[:arg]' -> get_config(arg)."""
  from mem_diffusion import convert  # pylint: disable=g-import-not-at-top
  return convert.load_config(spec)


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
  try:
    if isinstance(old, bool):
      if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(raw)
      value: Any = raw.lower() in ("1", "true", "yes")
    elif isinstance(old, int):
      value = int(raw)
    elif isinstance(old, float):
      value = float(raw)
    elif isinstance(old, tuple):
      kind = type(old[0]) if old else int
      value = tuple(kind(v) for v in raw.split(",") if v)
    else:
      value = raw
  except ValueError:
    raise ValueError(f"--set {assignment!r}: {raw!r} is not a valid {type(old).__name__} "
                     f"for {key}") from None
  node[leaf] = value


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _report_matches(report: dict[str, Any], config: ml_collections.ConfigDict) -> bool:
  """Whether an existing eval report was made with this config's settings."""
  from mem_diffusion import sampling  # pylint: disable=g-import-not-at-top
  return (report.get("train_step") == config.training.num_steps
          and report.get("num_samples") == config.sampling.num_samples
          and report.get("sampling_chain") == sampling.chain_description(config.sampling))


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """train -> sample -> eval, each resumed or skipped when complete."""
  from mem_diffusion import evaluate  # pylint: disable=g-import-not-at-top
  from mem_diffusion import sampling  # pylint: disable=g-import-not-at-top
  from mem_diffusion import train  # pylint: disable=g-import-not-at-top
  report_path = os.path.join(workdir, "eval", "report.json")
  samples_path = sampling.samples_path(config, workdir)
  report = _read_json(report_path)
  if report is not None:
    if _report_matches(report, config):
      return report
    logging.warning("%s was made with other settings: training resumes, then "
                    "sampling and evaluation run again", report_path)
    for stale in (report_path, samples_path):
      if os.path.exists(stale):
        os.remove(stale)
  summary = _read_json(os.path.join(workdir, "train_summary.json"))
  if summary is None or summary.get("step") != config.training.num_steps:
    train.train_and_evaluate(config, workdir)
    if os.path.exists(samples_path):  # made from an older checkpoint
      os.remove(samples_path)
  if not os.path.exists(samples_path):
    sampling.sample_to_workdir(config, workdir)
  return evaluate.evaluate_workdir(config, workdir)


def row(spec: str, config: ml_collections.ConfigDict, seed: int, workdir: str,
        report: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
  q = report.get("quality") or {}
  d1, feats = q.get("d1") or {}, q.get("features") or {}
  ci = report.get("replicate_ci95") or [None, None]
  return {
      "name": config.name, "config": spec, "seed": seed, "dataset": config.data.dataset,
      "dummy_kind": config.data.dummy_kind or "none",
      "num_dummy": config.data.num_dummy if config.data.dummy_kind else 0,
      "num_original": config.data.num_original, "sampling": config.data.sampling,
      "conditional": bool(config.model.num_classes),
      "train_step": report.get("train_step"), "final_loss": report.get("final_loss"),
      "num_samples": report.get("num_samples"), "replicate_ratio": report.get("replicate_ratio"),
      "replicate_ci_low": ci[0], "replicate_ci_high": ci[1],
      "blend_ratio": report.get("blend_ratio"),
      "d1_median_ratio": d1.get("median_ratio"),
      "frac_below_heldout_p05": d1.get("frac_samples_below_heldout_p05"),
      "frechet": feats.get("frechet"), "frechet_heldout_split": feats.get("frechet_heldout_split"),
      "kid": feats.get("kid"), "kid_heldout_split": feats.get("kid_heldout_split"),
      "run_seconds": None if seconds is None else round(seconds, 1),
      "workdir": workdir,
  }


def _stats(values: Sequence[Any]) -> tuple[float | None, float | None]:
  v = np.array([np.nan if x is None else float(x) for x in values], np.float64)
  if not np.isfinite(v).any():
    return None, None
  return float(np.nanmean(v)), float(np.nanstd(v))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per config name: its settings and mean/std over seeds."""
  by_name: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    by_name.setdefault(r["name"], []).append(r)
  out = []
  for name, rs in by_name.items():
    first = rs[0]
    entry = {k: first[k] for k in ("name", "dataset", "dummy_kind", "num_dummy",
                                   "num_original", "sampling", "conditional")}
    entry["seeds"] = [r["seed"] for r in rs]
    entry["ratios"] = [r["replicate_ratio"] for r in rs]
    entry["ratio_mean"], entry["ratio_std"] = _stats(entry["ratios"])
    for k in QUALITY_KEYS + ("kid_heldout_split", "frechet_heldout_split"):
      entry[f"{k}_mean"], entry[f"{k}_std"] = _stats([r[k] for r in rs])
    out.append(entry)
  return out


def capacity_series(agg: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """Runs without dummies, per dataset, sorted by train-set size."""
  series: dict[str, list[dict[str, Any]]] = {}
  for e in agg:
    if e["dummy_kind"] == "none":
      series.setdefault(e["dataset"], []).append(e)
  return {k: sorted(v, key=lambda e: e["num_original"]) for k, v in series.items()
          if len({e["num_original"] for e in v}) >= 2}


def dummy_series(agg: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """Lines '<kind>, <sampling>' over num_dummy, each starting at its baseline.

  The baseline (x = 0) is the run without dummies of the same dataset and
  train-set size, so every line shows the change that adding dummies made.
  """
  base = {(e["dataset"], e["num_original"]): e for e in agg if e["dummy_kind"] == "none"}
  series: dict[str, list[dict[str, Any]]] = {}
  for e in agg:
    if e["dummy_kind"] == "none":
      continue
    label = f"{e['dummy_kind']}, {e['sampling']}"
    if len({(d["dataset"], d["num_original"]) for d in agg if d["dummy_kind"] != "none"}) > 1:
      label += f" (N={e['num_original']})"
    series.setdefault(label, []).append(e)
  out = {}
  for label, es in series.items():
    b = base.get((es[0]["dataset"], es[0]["num_original"]))
    out[label] = ([b] if b else []) + sorted(es, key=lambda e: e["num_dummy"])
  return out


def _figure(series: dict[str, list[dict[str, Any]]], x_field: str, path: str, *,
            xlabel: str, title: str, log_x: bool) -> None:
  """Replicate ratio (left) and quality (right) against x, one line per series."""
  from mem_diffusion import report  # pylint: disable=g-import-not-at-top
  plt = report._pyplot()  # pylint: disable=protected-access
  fig, (ax, axq) = plt.subplots(1, 2, figsize=(10, 3.6))
  ticks: dict[float, str] = {}
  for label, es in sorted(series.items()):
    # A log axis cannot show x = 0: the baseline sits at half the smallest
    # nonzero x of the figure, and its tick says 0.
    xs = [e[x_field] for e in es]
    if log_x and xs and xs[0] == 0:
      nonzero = [e[x_field] for s_ in series.values() for e in s_ if e[x_field] > 0]
      xs[0] = min(nonzero) / 2 if nonzero else 1
    for x, e in zip(xs, es):
      ticks[x] = "0" if e[x_field] == 0 else f"{e[x_field]:g}"
    ax.errorbar(xs, [e["ratio_mean"] for e in es], yerr=[e["ratio_std"] for e in es],
                marker="o", capsize=3, label=label)
    q = [(x, e["d1_median_ratio_mean"], e["d1_median_ratio_std"]) for x, e in zip(xs, es)
         if e["d1_median_ratio_mean"] is not None]
    if q:
      axq.errorbar([a for a, _, _ in q], [b for _, b, _ in q], yerr=[c for _, _, c in q],
                   marker="o", capsize=3, label=label)
  for a in (ax, axq):
    a.set_xlabel(xlabel)
    if log_x:
      a.set_xscale("log", base=2)
      a.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
      a.minorticks_off()
    a.legend(fontsize=7)
  ax.set_ylabel("replicate ratio (d1/d2 < 1/3)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(f"{title}: memorization (error bars: std over seeds)", fontsize=9)
  axq.set_ylabel("median d1: samples / held-out reals")
  axq.axhline(1.0, color="gray", lw=0.8, ls=":")
  axq.set_title("quality (1 = as far from train set as new real images)", fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=130)
  plt.close(fig)


def _fmt(mean: float | None, std: float | None, digits: int = 3) -> str:
  if mean is None:
    return "-"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(agg: Sequence[dict[str, Any]]) -> str:
  """The aggregate as Markdown: each replicate ratio next to its quality."""
  lines = ["| run | N orig | dummies | sampling | seeds | replicate ratio (mean ± std) "
           "| per seed | d1 median ratio | frac < held-out p05 | KID (floor) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for e in agg:
    dummies = "-" if e["dummy_kind"] == "none" else f"{e['num_dummy']} {e['dummy_kind']}"
    per_seed = ", ".join("-" if r is None else f"{r:.2f}" for r in e["ratios"])
    kid = "-" if e["kid_mean"] is None else (
        f"{e['kid_mean']:.3g} ({e['kid_heldout_split_mean']:.2g})")
    lines.append(
        f"| {e['name']} | {e['num_original']} | {dummies} | "
        f"{e['sampling'] if e['dummy_kind'] != 'none' else '-'} | {len(e['seeds'])} | "
        f"{_fmt(e['ratio_mean'], e['ratio_std'])} | {per_seed} | "
        f"{_fmt(e['d1_median_ratio_mean'], e['d1_median_ratio_std'], 2)} | "
        f"{_fmt(e['frac_below_heldout_p05_mean'], e['frac_below_heldout_p05_std'], 2)} | {kid} |")
  return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[dict[str, Any]], root: str) -> list[str]:
  """summary.csv/json/md and the figures; returns the figure paths written."""
  from mem_diffusion import files, report  # pylint: disable=g-import-not-at-top,g-multiple-import
  os.makedirs(root, exist_ok=True)
  tmp = os.path.join(root, "summary.csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow(r)
  os.replace(tmp, os.path.join(root, "summary.csv"))
  agg = aggregate(rows)
  files.write_json(os.path.join(root, "summary.json"), {"rows": list(rows), "aggregate": agg})
  with open(os.path.join(root, "summary.md"), "w") as f:
    f.write(markdown_table(agg))
  figures = []
  cap = capacity_series(agg)
  if cap:
    path = os.path.join(root, "capacity.png")
    _figure(cap, "num_original", path, xlabel="train-set size N (no dummies)",
            title="capacity", log_x=True)
    figures.append(path)
  dummies = dummy_series(agg)
  if dummies:
    path = os.path.join(root, "dummies.png")
    _figure(dummies, "num_dummy", path, xlabel="number of dummy images (0 = none)",
            title="dummy data", log_x=True)
    figures.append(path)
  return figures


def enable_compile_cache(directory: str) -> None:
  """Persistent compilation cache, also for programs that compile quickly."""
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def plan_runs(specs: Sequence[str], seeds: Sequence[int], root: str,
              overrides: Sequence[str] = ()) -> list[tuple[str, int, Any, str]]:
  """(spec, seed, config, workdir) for every run, all validated up front.

  A typo in the 7th config must not surface after six hours of training.
  """
  from mem_diffusion import validate  # pylint: disable=g-import-not-at-top
  if not specs:
    raise ValueError("no configs to run")
  plan, names = [], {}
  for spec in specs:
    for seed in seeds:
      config = load_config(spec)
      for o in overrides:
        apply_override(config, o)
      config.seed = int(seed)
      validate.validate_config(config)
      if names.setdefault(config.name, spec) != spec:
        raise ValueError(f"configs {names[config.name]!r} and {spec!r} have the same name "
                         f"{config.name!r}: their runs would share a workdir")
      plan.append((spec, int(seed), config, os.path.join(root, config.name, f"seed{seed}")))
  return plan


def sweep(specs: Sequence[str], seeds: Sequence[int], root: str,
          overrides: Sequence[str] = (), *, compile_cache: str = "") -> list[dict[str, Any]]:
  """Runs every (spec, seed); returns the summary rows (also written to root)."""
  plan = plan_runs(specs, seeds, root, overrides)
  if compile_cache != "none":
    enable_compile_cache(compile_cache or os.path.join(root, "jax_cache"))
  rows = []
  for i, (spec, seed, config, workdir) in enumerate(plan):
    logging.info("sweep run %d/%d: %s seed %d -> %s", i + 1, len(plan), spec, seed, workdir)
    start = time.time()
    report = run_stages(config, workdir)
    rows.append(row(spec, config, seed, workdir, report, time.time() - start))
    write_outputs(rows, root)
    print(f"[{i + 1}/{len(plan)}] {config.name} seed {seed}: replicate ratio "
          f"{report['replicate_ratio']:.3f} ({time.time() - start:.0f} s)", flush=True)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if bool(FLAGS.configs) == bool(FLAGS.preset) or not FLAGS.root:
    print("error: --root and exactly one of --configs / --preset are required", file=sys.stderr)
    sys.exit(2)
  specs = list(PRESETS[FLAGS.preset]) if FLAGS.preset else split_specs(FLAGS.configs)
  try:
    seeds = [int(s) for s in FLAGS.seeds]
    sweep(specs, seeds, FLAGS.root, FLAGS.set, compile_cache=FLAGS.compile_cache)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
