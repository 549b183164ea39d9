"""The study's presets, its per-config aggregate, figures and tables.

The sweep (mem_diffusion/experiments/sweep.py) runs configs and collects one row per
(config, seed); this module turns the rows into the paper's comparisons.
Every group is read from config fields (dataset, dummy_kind, num_dummy,
num_original, sampling, num_steps, batch_size), never from spec strings, so
a `--configs` sweep gets the same figures wherever its runs fit a group:

- capacity: runs without dummies, one line per training budget and
  conditioning (dataset, num_steps, batch_size, conditioning), x = N.
- seed figure: at a base size N0, the dummy kinds with uniform batches at
  M = N0/2, N0, 2 N0 (the seed's 1k/2k/4k dummies beside 2k cars; hybrids
  once per reading of their cutoff), each from x = 0 at the like-for-like
  baseline: the conditional no-dummy run with one label for all (dummy runs
  are conditional; conditioning alone changes memorization). Plus
  "more <dataset>, <conditioning>": the no-dummy runs at N = N0 + M, drawn
  at x = M, once per conditioning that has runs (unconditional beside).
- dummies fill: a dummy kind that has 'balanced' runs, uniform against
  balanced over every M (each line labelled with its batch size and loss
  scale: balanced at batch 2B with the loss x2 gives the original class the
  no-dummy run's B rows per step and 1/B weight per row).
- per class: runs whose report's `per_class` block has several classes
  (samples of every label), the ratio of each class.

Each cell is the mean over seeds with the sample std and min-max; the bars
of every figure are min-max (not bounds: 3-5 seeds), and each run's own
Wilson 95% interval is listed in summary.md.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from mem_diffusion import report as report_lib

# The settings that define a config, copied from its rows to its aggregate.
CONFIG_FIELDS = ("name", "dataset", "dummy_kind", "hybrid_mask", "num_dummy", "num_original",
                 "sampling", "conditional", "conditioning", "num_steps", "batch_size",
                 "loss_scale", "draws_per_original", "class_counts")
QUALITY_KEYS = ("d1_median_ratio", "frac_below_heldout_p05", "frechet", "kid",
                "kid_heldout_split", "frechet_heldout_split")
SEED_FACTORS = (0.5, 1.0, 2.0)  # dummies per original image in the seed's figure


# ---------------------------------------------------------------------------
# Aggregate over seeds.

def stats(values: Sequence[Any]) -> dict[str, float | None]:
  """mean, sample std (n - 1; None below 2 values), min, max of the numbers."""
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  if not v:
    return {"mean": None, "std": None, "min": None, "max": None}
  mean = sum(v) / len(v)
  std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
  return {"mean": mean, "std": std, "min": min(v), "max": max(v)}


def _with_prefix(prefix: str, s: dict[str, float | None]) -> dict[str, float | None]:
  return {f"{prefix}_{k}": v for k, v in s.items()}


def _per_class(rs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  classes = sorted({c for r in rs for c in (r.get("per_class") or {})}, key=str)
  out = {}
  for c in classes:
    got = [(r.get("per_class") or {}).get(c) or {} for r in rs]
    ratios = [g.get("ratio") for g in got]
    out[c] = {"ratios": ratios, "ci95": [g.get("ci95") for g in got],
              **_with_prefix("ratio", stats(ratios))}
  return out


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per config name (first-seen order): settings and stats over seeds."""
  by_name: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    by_name.setdefault(r["name"], []).append(r)
  out = []
  for rs in by_name.values():
    entry = {k: rs[0].get(k) for k in CONFIG_FIELDS}
    # Rows of sweeps from before the conditioning control lack these.
    entry["conditioning"] = entry["conditioning"] or (
        "class labels" if entry["conditional"] else "unconditional")
    entry["loss_scale"] = entry["loss_scale"] or 1.0
    entry["seeds"] = [r["seed"] for r in rs]
    entry["ratios"] = [r["replicate_ratio"] for r in rs]
    entry["ratio_ci95"] = [[r.get("replicate_ci_low"), r.get("replicate_ci_high")] for r in rs]
    entry.update(_with_prefix("ratio", stats(entry["ratios"])))
    # Rows from reports written before the duplicate-aware ratio existed lack it.
    entry["ratios_dedup"] = [r.get("replicate_ratio_dedup") for r in rs]
    entry.update(_with_prefix("ratio_dedup", stats(entry["ratios_dedup"])))
    entry["ratios_originals"] = [r.get("replicate_ratio_originals") for r in rs]
    entry.update(_with_prefix("ratio_originals", stats(entry["ratios_originals"])))
    for k in QUALITY_KEYS:
      entry.update(_with_prefix(k, stats([r.get(k) for r in rs])))
    entry["per_class"] = _per_class(rs)
    out.append(entry)
  return out


# ---------------------------------------------------------------------------
# Groups: {line label: [(x, entry), ...]}, each line sorted by x.

Series = dict[str, list[tuple[float, dict[str, Any]]]]
# The baseline a class-conditional dummy run is compared with: the same
# architecture (two labels) with every real image under label 0.
_LIKE_DUMMY_RUNS = ("one label", "unconditional")


def _no_dummies(e: dict[str, Any]) -> bool:
  return e["dummy_kind"] == "none" and not e.get("class_counts")


def _label(parts: Sequence[str], keep: Sequence[bool]) -> str:
  return ", ".join(p for p, k in zip(parts, keep) if k) or parts[0]


def dummy_label(e: dict[str, Any]) -> str:
  """The dummy kind, with the reading of the cutoff for hybrids."""
  mask = e.get("hybrid_mask")
  return f"{e['dummy_kind']} ({mask})" if e["dummy_kind"] == "hybrid" and mask else e["dummy_kind"]


def capacity_series(agg: Sequence[dict[str, Any]]) -> Series:
  """No-dummy runs, one line per (dataset, budget, batch, conditioning), >= 2 sizes."""
  lines: dict[tuple, list] = {}
  for e in filter(_no_dummies, agg):
    key = (e["dataset"], e["num_steps"], e["batch_size"], e["conditioning"])
    lines.setdefault(key, []).append((e["num_original"], e))
  lines = {k: v for k, v in lines.items() if len({x for x, _ in v}) >= 2}
  varies = [len({k[i] for k in lines}) > 1 for i in range(4)]
  return {_label((f"{s} steps", d, f"batch {b}", c), (True, varies[0], varies[2], varies[3])):
          sorted(v, key=lambda p: p[0]) for (d, s, b, c), v in sorted(lines.items())}


def _bases(agg: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
  """The no-dummy run of each (dataset, N, num_steps, batch_size, conditioning)."""
  return {(e["dataset"], e["num_original"], e["num_steps"], e["batch_size"],
           e["conditioning"]): e for e in filter(_no_dummies, agg)}


def _like_base(bases: dict[tuple, dict[str, Any]], key: tuple) -> dict[str, Any] | None:
  """The baseline of dummy runs at key (dataset, N, steps, batch): conditional
  with one label where it exists (older sweeps: the unconditional run)."""
  return next((bases[key + (c,)] for c in _LIKE_DUMMY_RUNS if key + (c,) in bases), None)


def seed_series(agg: Sequence[dict[str, Any]]) -> Series:
  """Dummy kinds (uniform batches, M/N0 in SEED_FACTORS) and more originals, x = M.

  Every dummy line starts (x = 0) at the conditional one-label baseline;
  each 'more <dataset>' line (extra originals: N = N0 + M) is drawn for
  every conditioning that has runs, from its own baseline.
  """
  bases = _bases(agg)
  groups: dict[tuple, Series] = {}
  for e in agg:
    n0, m = e["num_original"], e["num_dummy"]
    if (e["dummy_kind"] == "none" or e["sampling"] != "uniform" or e["loss_scale"] != 1
        or not any(math.isclose(m, f * n0) for f in SEED_FACTORS)):
      continue
    key = (e["dataset"], n0, e["num_steps"], e["batch_size"])
    groups.setdefault(key, {}).setdefault(dummy_label(e), []).append((m, e))
  out: Series = {}
  several = len(groups) > 1
  for key, lines in sorted(groups.items()):
    dataset, n0 = key[0], key[1]
    counts = sorted({m for pts in lines.values() for m, _ in pts})
    base = _like_base(bases, key)
    suffix = f" (N={n0}, {key[2]} steps)" if several else ""
    for label, pts in lines.items():
      out[label + suffix] = ([(0, base)] if base else []) + sorted(pts, key=lambda p: p[0])
    for cond in sorted({k[4] for k in bases}):
      more = [(m, bases[(dataset, n0 + m) + key[2:] + (cond,)]) for m in [0] + counts
              if (dataset, n0 + m) + key[2:] + (cond,) in bases]
      if len(more) > 1:
        out[f"more {dataset}, {cond}{suffix}"] = more
  return out


def fill_series(agg: Sequence[dict[str, Any]]) -> Series:
  """Uniform vs balanced batches of a dummy kind that has balanced runs, x = M."""
  groups: dict[tuple, dict[tuple, list]] = {}
  for e in agg:
    if e["dummy_kind"] != "none" and e["sampling"] in ("uniform", "balanced"):
      key = (e["dataset"], e["num_original"], e["num_steps"], dummy_label(e))
      line = (e["sampling"], e["batch_size"], e["loss_scale"])
      groups.setdefault(key, {}).setdefault(line, []).append((e["num_dummy"], e))
  groups = {k: v for k, v in groups.items() if any(s == "balanced" for s, _, _ in v)}
  bases = _bases(agg)
  out: Series = {}
  several = len(groups) > 1
  for (dataset, n0, steps, kind), lines in sorted(groups.items()):
    suffix = f" ({kind}, N={n0})" if several else ""
    for (sampling, batch, scale), pts in sorted(lines.items()):
      # A balanced run at batch 2B starts from the baseline at batch B.
      base = _like_base(bases, (dataset, n0, steps, batch)) or next(
          (b for c in _LIKE_DUMMY_RUNS for k, b in sorted(bases.items(), key=lambda kv: kv[0][3])
           if k[:3] == (dataset, n0, steps) and k[4] == c), None)
      loss = "" if scale == 1 else f", loss x{scale:g}"
      out[f"{sampling} (batch {batch}{loss}){suffix}"] = (
          ([(0, base)] if base else []) + sorted(pts, key=lambda p: p[0]))
  return out


def crossing(points: Sequence[tuple[float, float]], level: float) -> float | None:
  """Where a falling line of (x, mean ratio) drops through `level` for the
  last time (below it from there on, seed noise before it cannot move it
  back), interpolated linearly in x; None if it never does."""
  for (x0, y0), (x1, y1) in reversed(list(zip(points, points[1:]))):
    if y0 >= level > y1:
      return x0 + (y0 - level) * (x1 - x0) / (y0 - y1)
  return None


def switch_lines(series: Series) -> list[str]:
  """Where each capacity line stops copying: N at 0.9 and 0.1, and their ratio
  (one definition of the switch's width for every table that quotes it)."""
  out = []
  for label, pts in series.items():
    means = [(x, e["ratio_mean"]) for x, e in pts if e["ratio_mean"] is not None]
    hi, lo = crossing(means, 0.9), crossing(means, 0.1)
    if hi is None and lo is None:
      continue
    f = lambda v: "-" if v is None else f"{v:.0f}"  # pylint: disable=unnecessary-lambda-assignment
    width = f"; width N(0.1) / N(0.9) = {lo / hi:.1f}" if hi and lo else ""
    out.append(f"- {label}: the mean ratio crosses 0.9 at N = {f(hi)} and 0.1 at N = "
               f"{f(lo)} (linear in N between measured sizes){width}")
  return out


# ---------------------------------------------------------------------------
# Figures and tables.

def points(series: Series, key: str) -> dict[str, list[tuple]]:
  """(x, mean, min, max) of `key` ('ratio', 'd1_median_ratio') per line."""
  return {label: [(x, e[f"{key}_mean"], e[f"{key}_min"], e[f"{key}_max"])
                  for x, e in pts if e[f"{key}_mean"] is not None]
          for label, pts in series.items()}


FIGURES = (  # file, series, title, x label, log x
    ("capacity.png", capacity_series, "capacity: replicate ratio vs train-set size",
     "train-set size N (no dummies)", True),
    ("seed_figure.png", seed_series, "the seed's figure: dummies beside the real set",
     "number of extra images M (0 = the base set alone)", False),
    ("dummies_fill.png", fill_series, "dummies fill capacity: uniform vs balanced batches",
     "number of dummy images M (0 = none)", True),
)


def write_figures(agg: Sequence[dict[str, Any]], root: str) -> list[str]:
  """Every figure that has data; ratio (left) and quality (right) panels."""
  written = []
  for file, make, title, xlabel, log_x in FIGURES:
    series = make(agg)
    if not series:
      continue
    path = os.path.join(root, file)
    report_lib.errorbar_figure([
        report_lib.Panel(f"{title}\n(bars: min-max over seeds)",
                         "replicate ratio (d1/d2 < 1/3)", points(series, "ratio"),
                         ylim=(-0.02, 1.02)),
        report_lib.Panel("quality (1 = as far from the train set as new real images)",
                         "median d1: samples / held-out reals",
                         points(series, "d1_median_ratio"), hline=1.0),
    ], path, xlabel=xlabel, log_x=log_x)
    written.append(path)
  return written


def cell(e: dict[str, Any], key: str, digits: int = 3) -> str:
  """'mean ± sample std (min-max)', 'mean (min-max)' for one seed, '-' for none."""
  if e.get(f"{key}_mean") is None:
    return "-"
  f = lambda v: f"{v:.{digits}f}"  # pylint: disable=unnecessary-lambda-assignment
  std = "" if e.get(f"{key}_std") is None else f" ± {f(e[key + '_std'])}"
  return f"{f(e[key + '_mean'])}{std} ({f(e[key + '_min'])}-{f(e[key + '_max'])})"


def draws(e: dict[str, Any]) -> str:
  """Training draws per original image, or '-' for rows that predate it."""
  return "-" if e.get("draws_per_original") is None else f"{e['draws_per_original']:.0f}"


def per_seed(ratios: Sequence[Any], cis: Sequence[Any], seeds: Sequence[Any]) -> str:
  """'s0: 0.50 [0.41, 0.59]; ...' (each run's Wilson 95% interval)."""
  out = []
  for s, r, ci in zip(seeds, ratios, cis):
    ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""
    out.append(f"s{s}: " + ("-" if r is None else f"{r:.2f}{ci_txt}"))
  return "; ".join(out)


def _series_table(series: Series, xname: str) -> list[str]:
  lines = [f"| line | {xname} | run | replicate ratio | per seed (Wilson 95%) "
           "| vs originals only | draws / real image | d1 median ratio |",
           "|---|---|---|---|---|---|---|---|"]
  for label, pts in series.items():
    for x, e in pts:
      lines.append(f"| {label} | {x:g} | {e['name']} | {cell(e, 'ratio')} | "
                   f"{per_seed(e['ratios'], e['ratio_ci95'], e['seeds'])} | "
                   f"{cell(e, 'ratio_originals')} | {draws(e)} | "
                   f"{cell(e, 'd1_median_ratio', 2)} |")
  return lines


def _class_table(agg: Sequence[dict[str, Any]]) -> list[str]:
  lines = ["| run | class counts | class | replicate ratio | per seed (Wilson 95%) |",
           "|---|---|---|---|---|"]
  for e in agg:
    for c, s in e["per_class"].items():
      lines.append(f"| {e['name']} | {e.get('class_counts') or '-'} | {c} | {cell(s, 'ratio')} "
                   f"| {per_seed(s['ratios'], s['ci95'], e['seeds'])} |")
  return lines


def _all_runs_table(agg: Sequence[dict[str, Any]]) -> list[str]:
  """Every config, so runs outside the groups are in the summary too.

  'dedup' is the duplicate-aware ratio (docs/quality.md says when it differs).
  """
  lines = ["| run | N orig | dummies | sampling | conditioning | steps | batch | replicate ratio "
           "| per seed (Wilson 95%) | vs originals only | draws / real image | dedup ratio "
           "| d1 median ratio | frac < held-out p05 | KID (floor) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for e in agg:
    dummies = "-" if e["dummy_kind"] == "none" else f"{e['num_dummy']} {dummy_label(e)}"
    loss = "" if e["loss_scale"] == 1 else f" (loss x{e['loss_scale']:g})"
    kid = "-" if e["kid_mean"] is None else (
        f"{e['kid_mean']:.3g} ({e['kid_heldout_split_mean'] or 0:.2g})")
    lines.append(
        f"| {e['name']} | {e['num_original']} | {dummies} | "
        f"{e['sampling'] if e['dummy_kind'] != 'none' else '-'} | {e['conditioning']} | "
        f"{e['num_steps']} | {e['batch_size']}{loss} | "
        f"{cell(e, 'ratio')} | {per_seed(e['ratios'], e['ratio_ci95'], e['seeds'])} | "
        f"{cell(e, 'ratio_originals')} | {draws(e)} | {cell(e, 'ratio_dedup')} | "
        f"{cell(e, 'd1_median_ratio', 2)} | {cell(e, 'frac_below_heldout_p05', 2)} | {kid} |")
  return lines


def markdown(agg: Sequence[dict[str, Any]]) -> str:
  """summary.md: one table per group that has runs, then every run.

  Cells are `mean ± sample std (min-max)` over seeds.
  """
  parts = ["Cells: mean ± sample standard deviation (n - 1) (min-max) over seeds; each "
           "seed's own Wilson 95% interval beside them. A min-max range over 3-5 seeds "
           "is not a bound: another seed can fall outside it.", ""]
  cap = capacity_series(agg)
  if cap:
    parts += ["## Capacity (no dummies; one line per training budget and conditioning)", "",
              *_series_table(cap, "N"), "", *switch_lines(cap), ""]
  seed = seed_series(agg)
  if seed:
    parts += ["## The seed's figure (uniform batches; 'more' = extra original images)", "",
              *_series_table(seed, "M"), ""]
  fill = fill_series(agg)
  if fill:
    parts += ["## Dummies fill capacity (uniform vs balanced batches)", "",
              *_series_table(fill, "M"), ""]
  # Every labelled sample set has a per_class block; one class says nothing more.
  classes = [e for e in agg if len(e["per_class"]) > 1]
  if classes:
    parts += ["## Per class (samples of every label; '(dummy label)': the samples drawn "
              "with the dummy label, against the whole train set)", "",
              *_class_table(classes), ""]
  parts += ["## All runs", "", *_all_runs_table(agg)]
  return "\n".join(parts) + "\n"
