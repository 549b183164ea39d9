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
import os
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import ml_collections
import numpy as np

from mem_diffusion import cli
from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion import report as report_lib
from mem_diffusion import runtime
from mem_diffusion.config_loading import apply_override, load_config

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

def _define_flags() -> None:
  """Only when run as a script: importing this module next to another CLI must not
  collide on flag names."""
  flags.DEFINE_multi_string("configs", None, "Config files, each optionally with ':arg', "
                            "comma-separated (commas inside an ':arg' are kept: a new "
                            "config starts at each item naming a .py file); repeatable.")
  flags.DEFINE_enum("preset", None, sorted(PRESETS), "A named list of configs (instead of --configs).")
  flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) to run for every config.")
  flags.DEFINE_string("root", None, "Directory holding one workdir per run.")
  flags.DEFINE_multi_string("set", [], "key=value override for every config, e.g. training.num_steps=500.")
  flags.DEFINE_string("compile_cache", "", "Persistent JAX compilation cache ('' = <root>/jax_cache, "
                      "'none' = off).")
  flags.DEFINE_bool("verbose", False, "Show the INFO logs of JAX, orbax, absl and TensorFlow.")


COLUMNS = ("name", "config", "seed", "dataset", "dummy_kind", "num_dummy", "num_original",
           "sampling", "conditional", "train_step", "final_loss", "num_samples",
           "replicate_ratio", "replicate_ci_low", "replicate_ci_high", "replicate_ratio_dedup",
           "replicate_dedup_ci_low", "replicate_dedup_ci_high", "blend_ratio",
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




def row(spec: str, config: ml_collections.ConfigDict, seed: int, workdir: str,
        report: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
  q = report.get("quality") or {}
  d1, feats = q.get("d1") or {}, q.get("features") or {}
  ci = report.get("replicate_ci95") or [None, None]
  ci_u = report.get("replicate_ci95_dedup") or [None, None]
  return {
      "name": config.name, "config": spec, "seed": seed, "dataset": config.data.dataset,
      "dummy_kind": config.data.dummy_kind or "none",
      "num_dummy": config.data.num_dummy if config.data.dummy_kind else 0,
      "num_original": config.data.num_original, "sampling": config.data.sampling,
      "conditional": bool(config.model.num_classes),
      "train_step": report.get("train_step"), "final_loss": report.get("final_loss"),
      "num_samples": report.get("num_samples"), "replicate_ratio": report.get("replicate_ratio"),
      "replicate_ci_low": ci[0], "replicate_ci_high": ci[1],
      "replicate_ratio_dedup": report.get("replicate_ratio_dedup"),
      "replicate_dedup_ci_low": ci_u[0], "replicate_dedup_ci_high": ci_u[1],
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
    # Rows from reports written before the duplicate-aware ratio existed lack it.
    entry["ratios_dedup"] = [r.get("replicate_ratio_dedup") for r in rs]
    entry["ratio_dedup_mean"], entry["ratio_dedup_std"] = _stats(entry["ratios_dedup"])
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


def _fmt(mean: float | None, std: float | None, digits: int = 3) -> str:
  if mean is None:
    return "-"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(agg: Sequence[dict[str, Any]]) -> str:
  """The aggregate as Markdown: each replicate ratio next to its quality.

  'replicate ratio' is the seed's rule (train set as stored); 'dedup' is the
  duplicate-aware ratio (docs/quality.md says when the two differ).
  """
  lines = ["| run | N orig | dummies | sampling | seeds | replicate ratio (mean ± std) "
           "| per seed | dedup ratio (mean ± std) | d1 median ratio | frac < held-out p05 "
           "| KID (floor) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for e in agg:
    dummies = "-" if e["dummy_kind"] == "none" else f"{e['num_dummy']} {e['dummy_kind']}"
    per_seed = ", ".join("-" if r is None else f"{r:.2f}" for r in e["ratios"])
    kid = "-" if e["kid_mean"] is None else (
        f"{e['kid_mean']:.3g} ({e['kid_heldout_split_mean']:.2g})")
    lines.append(
        f"| {e['name']} | {e['num_original']} | {dummies} | "
        f"{e['sampling'] if e['dummy_kind'] != 'none' else '-'} | {len(e['seeds'])} | "
        f"{_fmt(e['ratio_mean'], e['ratio_std'])} | {per_seed} | "
        f"{_fmt(e['ratio_dedup_mean'], e['ratio_dedup_std'])} | "
        f"{_fmt(e['d1_median_ratio_mean'], e['d1_median_ratio_std'], 2)} | "
        f"{_fmt(e['frac_below_heldout_p05_mean'], e['frac_below_heldout_p05_std'], 2)} | {kid} |")
  return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[dict[str, Any]], root: str) -> list[str]:
  """summary.csv/json/md and the figures; returns the figure paths written."""
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
    report_lib.study_figure(cap, "num_original", path, xlabel="train-set size N (no dummies)",
                            title="capacity", log_x=True)
    figures.append(path)
  dummies = dummy_series(agg)
  if dummies:
    path = os.path.join(root, "dummies.png")
    report_lib.study_figure(dummies, "num_dummy", path,
                            xlabel="number of dummy images (0 = none)", title="dummy data",
                            log_x=True)
    figures.append(path)
  return figures


def plan_runs(specs: Sequence[str], seeds: Sequence[int], root: str,
              overrides: Sequence[str] = ()) -> list[tuple[str, int, Any, str]]:
  """(spec, seed, config, workdir) for every run, all validated up front.

  A typo in the 7th config must not surface after six hours of training.
  """
  from mem_diffusion import validate  # pylint: disable=g-import-not-at-top  # JAX loads after flag parsing
  if not specs:
    raise errors.ConfigError("no configs to run")
  plan, names = [], {}
  for spec in specs:
    for seed in seeds:
      config = load_config(spec)
      for o in overrides:
        apply_override(config, o)
      config.seed = int(seed)
      validate.validate_config(config)
      if names.setdefault(config.name, spec) != spec:
        raise errors.ConfigError(f"configs {names[config.name]!r} and {spec!r} have the same name "
                         f"{config.name!r}: their runs would share a workdir")
      plan.append((spec, int(seed), config, os.path.join(root, config.name, f"seed{seed}")))
  return plan


def sweep(specs: Sequence[str], seeds: Sequence[int], root: str,
          overrides: Sequence[str] = (), *, compile_cache: str = "",
          verbose: bool = False) -> list[dict[str, Any]]:
  """Runs every (spec, seed); returns the summary rows (also written to root).

  Raises errors.UserError for every documented failure (a bad config before
  the first run starts; a locked workdir, a corrupt checkpoint or a
  diverged run when it happens, with the runs before it kept in the summary).
  """
  from mem_diffusion import stages  # pylint: disable=g-import-not-at-top  # JAX loads after flag parsing
  plan = plan_runs(specs, seeds, root, overrides)
  runtime.setup(verbose=verbose,
                compile_cache=compile_cache or os.path.join(root, "jax_cache"))
  rows = []
  for i, (spec, seed, config, workdir) in enumerate(plan):
    print(f"[{i + 1}/{len(plan)}] {config.name} seed {seed} -> {workdir}", flush=True)
    start = time.time()
    report = stages.run(config, workdir, validate=False)
    rows.append(row(spec, config, seed, workdir, report, time.time() - start))
    write_outputs(rows, root)
    print(f"[{i + 1}/{len(plan)}] {config.name} seed {seed}: replicate ratio "
          f"{report['replicate_ratio']:.3f} ({time.time() - start:.0f} s)", flush=True)
  return rows


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if bool(FLAGS.configs) == bool(FLAGS.preset) or not FLAGS.root:
    cli.fail("--root and exactly one of --configs / --preset are required")
  specs = list(PRESETS[FLAGS.preset]) if FLAGS.preset else split_specs(FLAGS.configs)
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    cli.fail(f"--seeds must be integers, got {','.join(FLAGS.seeds)}")
  rows = cli.call(lambda: sweep(specs, seeds, FLAGS.root, FLAGS.set,
                                compile_cache=FLAGS.compile_cache, verbose=FLAGS.verbose))
  print(f"{len(rows)} runs; summary in {os.path.join(FLAGS.root, 'summary.md')}", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
