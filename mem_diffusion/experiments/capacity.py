"""Memorization capacity as a number: bisection over the train-set size.

  python -m mem_diffusion.capacity --config=configs/toy_capacity.py \\
      --root=runs/capacity_toy --lo=16 --hi=1024 --seeds=0

The paper's central quantity is the memorization capacity: the largest
train set a model (at a given size and training budget) still copies.
Following DiffMemorize's "effective model memorization", this finds

- `capacity`: the largest N with replicate ratio >= --high (0.9), and
- `collapse`: the smallest N with replicate ratio < --low (0.1),

each bracketed to within a factor --resolution (1.25) by geometric
bisection between --lo and --hi. The ratio at N is the mean over --seeds of
full train -> sample -> eval runs of the config with `data.num_original = N`,
each in `<root>/n<N>/seed<k>` through the stage runner, so a rerun after a
crash reuses every finished run and the search takes the same path. The
search assumes the ratio falls with N (it does in every curve measured here
and in the papers); the figure shows every point, so a violation is visible.

Writes `<root>/capacity.json` (points, both numbers, their brackets) and
`<root>/capacity.png` (ratio and quality against N, the two thresholds).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import ml_collections

from mem_diffusion.run import cli
from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion import report as report_lib
from mem_diffusion.experiments import sweep_root
from mem_diffusion.run import cpu_tuning
from mem_diffusion.run import runtime
from mem_diffusion.config import apply_override, load_config, validate_config

FLAGS = flags.FLAGS

def _define_flags() -> None:
  """Only when run as a script: importing this module next to another CLI must not
  collide on flag names."""
  flags.DEFINE_string("config", None, "Config file (e.g. configs/toy_capacity.py or "
                      "configs/capacity.py:mondrian); data.num_original is set per run.")
  flags.DEFINE_string("root", None, "Directory holding one workdir per (N, seed).")
  flags.DEFINE_integer("lo", 16, "Smallest train-set size searched.")
  flags.DEFINE_integer("hi", 1024, "Largest train-set size searched.")
  flags.DEFINE_list("seeds", ["0"], "Seeds averaged at every N.")
  flags.DEFINE_float("high", 0.9, "Replicate ratio that counts as memorizing.")
  flags.DEFINE_float("low", 0.1, "Replicate ratio under which memorization has collapsed.")
  flags.DEFINE_float("resolution", 1.25, "Stop when the bracket's ends differ by <= this factor.")
  flags.DEFINE_multi_string("set", [], "key=value override for every run.")
  cpu_tuning.define_flags(flags)
  flags.DEFINE_string("compile_cache", "", "Persistent JAX compilation cache ('' = <root>/jax_cache, "
                      "'none' = off).")
  flags.DEFINE_bool("verbose", False, "Show the INFO logs of JAX, orbax, absl and TensorFlow.")


def bisect_last(predicate: Callable[[int], bool], lo: int, hi: int,
                resolution: float) -> tuple[int, int]:
  """(a, b) with predicate(a) true, predicate(b) false and b <= a * resolution.

  The caller has checked predicate(lo) and not predicate(hi); midpoints are
  geometric (train-set sizes matter by ratio, not difference).
  """
  while hi > lo * resolution and hi - lo > 1:
    mid = min(max(int(round(math.sqrt(lo * hi))), lo + 1), hi - 1)
    if predicate(mid):
      lo = mid
    else:
      hi = mid
  return lo, hi


class Search:
  """Runs (N, seed) on demand, at most once each, and remembers the ratios."""

  def __init__(self, spec: str, root: str, seeds: Sequence[int], overrides: Sequence[str],
               thresholds: tuple[float, float]):
    self.spec, self.root, self.seeds, self.overrides = spec, root, list(seeds), list(overrides)
    self.thresholds = thresholds
    self.points: dict[int, dict[str, Any]] = {}

  def config(self, n: int, seed: int) -> ml_collections.ConfigDict:
    config = load_config(self.spec)
    for o in self.overrides:
      apply_override(config, o)
    config.data.num_original = int(n)
    config.seed = int(seed)
    config.name = f"{os.path.basename(os.path.normpath(self.root))}_n{n}"
    return config

  def check(self, sizes: Sequence[int]) -> None:
    """Validates the configs at the search's ends before any run starts."""
    for o in self.overrides:  # it would be replaced by every N without a word
      if o.partition("=")[0].strip() == "data.num_original":
        raise errors.ConfigError(f"--set {o!r}: the search sets data.num_original to each N "
                                 "it tries; give the range as --lo and --hi")
    for n in sizes:
      validate_config(self.config(n, self.seeds[0]))

  def ratio(self, n: int) -> float:
    if n not in self.points:
      from mem_diffusion.run import stages  # pylint: disable=g-import-not-at-top  # JAX loads after flag parsing
      runs = []
      for seed in self.seeds:
        workdir = os.path.join(self.root, f"n{n}", f"seed{seed}")
        print(f"N={n} seed {seed} -> {workdir}", flush=True)
        report = stages.run(self.config(n, seed), workdir)
        quality = ((report.get("quality") or {}).get("d1") or {}).get("median_ratio")
        runs.append({"seed": seed, "replicate_ratio": report["replicate_ratio"],
                     "replicate_ci95": report["replicate_ci95"],
                     "median_d1_ratio": quality})
      ratios = [r["replicate_ratio"] for r in runs]
      qualities = [r["median_d1_ratio"] for r in runs if r["median_d1_ratio"] is not None]
      self.points[n] = {"n": n, "replicate_ratio": sum(ratios) / len(ratios),
                        "median_d1_ratio": sum(qualities) / len(qualities) if qualities else None,
                        "runs": runs}
      print(f"N={n}: replicate ratio {self.points[n]['replicate_ratio']:.3f}", flush=True)
      self.write()
    return self.points[n]["replicate_ratio"]

  def write(self, result: dict[str, Any] | None = None) -> None:
    points = [self.points[n] for n in sorted(self.points)]
    files.write_json(os.path.join(self.root, "capacity.json"),
                          {"config": self.spec, "seeds": self.seeds, "overrides": self.overrides,
                           **(result or {}), "points": points})
    if len(points) >= 2:
      series = {"replicate ratio": [p["replicate_ratio"] for p in points]}
      if all(p["median_d1_ratio"] is not None for p in points):
        series["median d1 / held-out"] = [p["median_d1_ratio"] for p in points]
      report_lib.line_plot([p["n"] for p in points], series,
                           os.path.join(self.root, "capacity.png"), xlabel="train-set size N",
                           title=f"capacity search: {self.spec}", logx=True,
                           hlines=self.thresholds)


def check_arguments(*, lo: int, hi: int, seeds: Sequence[int], high: float, low: float,
                    resolution: float) -> None:
  """The search's own flags, before anything is created under the root."""
  if not 2 <= lo < hi:
    raise errors.ConfigError(f"--lo={lo} and --hi={hi}: expected 2 <= lo < hi")
  if not 0.0 < low < high <= 1.0:
    raise errors.ConfigError(f"--low={low} and --high={high}: expected 0 < low < high <= 1")
  if not 1.0 < resolution < math.inf:  # nan or inf would end the bisection at once
    raise errors.ConfigError(f"--resolution={resolution}: expected a finite factor > 1")
  if not seeds or len(set(seeds)) != len(seeds):
    raise errors.ConfigError(f"--seeds={','.join(map(str, seeds))}: expected distinct seeds, "
                             "at least one (a repeated seed would count one run twice)")


def search(spec: str, root: str, *, lo: int, hi: int, seeds: Sequence[int],
           high: float = 0.9, low: float = 0.1, resolution: float = 1.25,
           overrides: Sequence[str] = ()) -> dict[str, Any]:
  """Both numbers with their brackets; see the module docstring."""
  check_arguments(lo=lo, hi=hi, seeds=seeds, high=high, low=low, resolution=resolution)
  s = Search(spec, root, seeds, overrides, (high, low))
  s.check((lo, hi))
  result: dict[str, Any] = {"high": high, "low": low}
  r_lo, r_hi = s.ratio(lo), s.ratio(hi)
  if r_lo < high:
    result["capacity"] = {"below": lo}
  elif r_hi >= high:
    result["capacity"] = {"above": hi}
  else:
    a, b = bisect_last(lambda n: s.ratio(n) >= high, lo, hi, resolution)
    result["capacity"] = {"largest_n_at_or_above_high": a, "smallest_n_below_high": b}
  if r_hi >= low:
    result["collapse"] = {"above": hi}
  elif r_lo < low:
    result["collapse"] = {"below": lo}
  else:
    start = result["capacity"].get("largest_n_at_or_above_high", lo)
    a, b = bisect_last(lambda n: s.ratio(n) >= low, start, hi, resolution)
    result["collapse"] = {"largest_n_at_or_above_low": a, "smallest_n_below_low": b}
  s.write(result)
  return {**result, "points": [s.points[n] for n in sorted(s.points)]}


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.config or not FLAGS.root:
    cli.fail("--config and --root are required")
  try:
    seeds = [int(x) for x in FLAGS.seeds]
  except ValueError:
    cli.fail(f"--seeds must be integers, got {','.join(FLAGS.seeds)}")
  cli.prepare_process(FLAGS.xla_cpu_tuning, FLAGS.huge_pages)

  def run():
    check_arguments(lo=FLAGS.lo, hi=FLAGS.hi, seeds=seeds, high=FLAGS.high, low=FLAGS.low,
                    resolution=FLAGS.resolution)  # before anything is made under the root
    Search(FLAGS.config, FLAGS.root, seeds, FLAGS.set, (FLAGS.high, FLAGS.low)).check(
        (FLAGS.lo, FLAGS.hi))
    with sweep_root.hold(FLAGS.root):  # capacity.json/png are the root's: one search at a time
      runtime.setup(verbose=FLAGS.verbose,
                    compile_cache=FLAGS.compile_cache or os.path.join(FLAGS.root, "jax_cache"))
      return search(FLAGS.config, FLAGS.root, lo=FLAGS.lo, hi=FLAGS.hi, seeds=seeds,
                    high=FLAGS.high, low=FLAGS.low, resolution=FLAGS.resolution,
                    overrides=FLAGS.set)

  result = cli.call(run)
  print(f"capacity (ratio >= {FLAGS.high}): {result['capacity']}")
  print(f"collapse (ratio < {FLAGS.low}): {result['collapse']}")
  print(f"points and figure: {os.path.join(FLAGS.root, 'capacity.json')}, capacity.png")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
