"""Runs a list of experiments over several seeds and draws the study's figures.

  python -m mem_diffusion.sweep --root=runs/study --seeds=0,1,2 \\
      --configs=configs/cars_2k.py,configs/gm_1k.py,configs/gm_2k.py,configs/gm_4k.py
  python -m mem_diffusion.sweep --preset=toy --seeds=0,1,2 --root=runs/toy --jobs=2

Each (config, seed) runs train -> sample -> eval (stages.run) in
`<root>/<name>/seed<k>`. Every stage resumes or is skipped when its outputs
are complete, so rerunning the same command after a crash or a preemption
continues where it stopped; a finished run whose report no longer matches the
config (e.g. `--set training.num_steps=...` changed) is sampled and evaluated
again after training resumes. `--set key=value` overrides apply to every
config, after the preset's own (mem_diffusion/experiments/presets.py).

`--jobs=1` (default) runs one run after another in this process, on every
local device. `--jobs=J` runs each in a subprocess of this module
(`--worker`, experiments/workers.py), at most J at once, its output appended
to `<workdir>/sweep.log`. On a CPU host, with J <= the CPU count, worker w is
pinned to core w % count. The toy step is compute-bound but too small to
keep two cores busy: one unpinned process runs at ~32 ms/step, two pinned ones
at ~44 ms/step each, 1.45x the throughput (docs/benchmarks.md, "Toy run").
On a GPU host worker w gets `--devices_per_run` GPUs of its own
(CUDA_VISIBLE_DEVICES; experiments/devices.py counts them without starting
JAX here), and J x that must fit the host; a TPU host runs --jobs=1.
A failed run prints its log's last lines and the others go on; the sweep then
exits 1 naming it. Ctrl-C / SIGTERM stops the workers, which save (a rerun
resumes). XLA's CPU results depend on its thread count, which pinning sets:
a pinned worker and an unpinned main.py run of one config differ in the last
bits (measured: the same final loss to 5 significant digits), so J is part of what makes a
sweep bit-reproducible.

`--cluster=slurm` submits the unfinished runs as one SLURM array through
submitit and returns; the same command run again collects the finished runs
into the summary and figures (experiments/slurm.py).

The sweep holds its root (`<root>/.sweep.lock`: a second sweep or capacity
search there exits 2 at once), and refuses a plan that runs a (config,
seed) twice or names a run's folder outside the root (experiments/sweep_root.py).

Outputs in <root>, rewritten after every run so a partial sweep is readable,
from every finished run under the root (this command's and earlier ones'):
`summary.csv` (one row per run), `summary.json` (the rows and the per-config
aggregate: mean/std/min/max over seeds, per-class ratios), `summary.md` (one
table per group) and the figures `capacity.png`, `seed_figure.png`,
`dummies_fill.png` where their runs exist (mem_diffusion/experiments/study.py says which
runs each group takes). Each figure has the quality figure beside the ratio:
the samples' median nearest-training distance relative to held-out real
images (1 = as far from the train set as new real images; >> 1 = worse
images, not generalization).

Compiled programs are kept in a persistent JAX cache (`<root>/jax_cache` by
default, shared by the workers): runs that differ only in seed or train set
compile the same train step, which on CPU otherwise costs as much as a toy
run's training.
"""

from __future__ import annotations

import mem_diffusion.python_version  # pylint: disable=unused-import  # first: one error line on an old Python

import csv
import json
import os
import signal
import time
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
import ml_collections

from mem_diffusion.run import cli
from mem_diffusion.run import cpu_tuning
from mem_diffusion.run import environment
from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run import runtime
from mem_diffusion.experiments import devices as devices_lib
from mem_diffusion.experiments import presets
from mem_diffusion.experiments.rows import COLUMNS, row
from mem_diffusion.experiments import study
from mem_diffusion.experiments import sweep_root
from mem_diffusion.experiments import workers
from mem_diffusion.config import apply_override, load_config

PRESETS = presets.PRESETS
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
  flags.DEFINE_integer("jobs", 1, "Runs at once, each in a subprocess with a CPU core or GPUs "
                       "of its own (1 = in this process, on every local device).", lower_bound=1)
  flags.DEFINE_integer("devices", None, "GPUs on this host (default: counted without starting "
                       "JAX, from CUDA_VISIBLE_DEVICES or nvidia-smi; 0 = a CPU host).",
                       lower_bound=0)
  flags.DEFINE_integer("devices_per_run", 1, "GPUs each run of --jobs > 1 gets.", lower_bound=1)
  flags.DEFINE_string("compile_cache", "", "Persistent JAX compilation cache ('' = <root>/jax_cache, "
                      "'none' = off).")
  flags.DEFINE_bool("verbose", False, "Show the INFO logs of JAX, orbax, absl and TensorFlow.")
  flags.DEFINE_bool("worker", False, "Internal (--jobs > 1): run the one config and seed given, "
                    "without writing the summary.")
  flags.DEFINE_integer("pin_cpu", -1, "Internal: the CPU a --worker runs on (-1: any).")
  cpu_tuning.define_flags(flags)
  from mem_diffusion.experiments import slurm  # pylint: disable=g-import-not-at-top  # submitit only for the CLI
  for name in slurm.define_flags():
    flags.declare_key_flag(name)  # listed by --help beside the sweep's own


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




def write_outputs(rows: Sequence[dict[str, Any]], root: str) -> list[str]:
  """summary.csv/json/md and the figures; returns the figure paths written."""
  os.makedirs(root, exist_ok=True)
  tmp = os.path.join(root, "summary.csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
  os.replace(tmp, os.path.join(root, "summary.csv"))
  agg = study.aggregate(rows)
  files.write_json(os.path.join(root, "summary.json"), {  # each run's device: its train_summary.json
      "rows": list(rows), "aggregate": agg, "environment": environment.process_facts()})
  files.write_bytes(os.path.join(root, "summary.md"), study.markdown(agg).encode())
  return study.write_figures(agg, root)


def plan_runs(specs: Sequence[str], seeds: Sequence[int], root: str,
              overrides: Sequence[str] = (),
              seeds_by_spec: Mapping[str, Sequence[int]] | None = None
              ) -> list[tuple[str, int, Any, str]]:
  """(spec, seed, config, workdir) for every run, all validated up front.

  `seeds_by_spec` gives some specs their own seeds (a preset's close points).

  A typo in the 7th config must not surface after six hours of training.
  """
  from mem_diffusion import config as validate  # pylint: disable=g-import-not-at-top  # JAX loads after flag parsing
  if not specs:
    raise errors.ConfigError("no configs to run")
  plan, names = [], {}
  for spec in specs:
    for seed in (seeds_by_spec or {}).get(spec, seeds):
      config = load_config(spec)
      for o in overrides:
        apply_override(config, o)
      config.seed = int(seed)
      validate.validate_config(config)
      sweep_root.check_name(config.name)
      if names.setdefault(config.name, spec) != spec:
        raise errors.ConfigError(f"configs {names[config.name]!r} and {spec!r} have the same name "
                         f"{config.name!r}: their runs would share a workdir")
      plan.append((spec, int(seed), config, os.path.join(root, config.name, f"seed{seed}")))
  sweep_root.check_plan(plan)
  return plan


def _progress(k: int, n: int, config: ml_collections.ConfigDict, seed: int,
              report: dict[str, Any], seconds: float | None) -> None:
  """The line that ends a run; seconds None: it was complete already."""
  print(f"[{k}/{n}] {config.name} seed {seed}: replicate ratio "
        f"{report['replicate_ratio']:.3f} "
        + ("(complete, skipped)" if seconds is None else f"({seconds:.0f} s)"), flush=True)


def _file_row(plan, i: int, report: dict[str, Any], seconds: float | None,
              root: str) -> dict[str, Any]:
  """Run i's row, filed in its workdir; the summary rebuilt from every filed row."""
  spec, seed, config, workdir = plan[i]
  r = row(spec, config, seed, workdir, report, seconds)
  sweep_root.save_row(workdir, r)
  write_outputs(sweep_root.finished_rows(root, [p[3] for p in plan]), root)
  return r


def _cache_dir(compile_cache: str, root: str) -> str:
  return compile_cache or os.path.abspath(os.path.join(root, "jax_cache"))


def sweep(specs: Sequence[str], seeds: Sequence[int], root: str,
          overrides: Sequence[str] = (), *, jobs: int = 1, compile_cache: str = "",
          verbose: bool = False, devices: int | None = None, devices_per_run: int = 1,
          cluster: str = "none", slurm_options=None,
          seeds_by_spec: Mapping[str, Sequence[int]] | None = None) -> list[dict[str, Any]]:
  """Runs every (spec, seed); returns their rows (the summary in root has every
  finished run under it).

  Raises errors.UserError for every documented failure (a bad config, a plan
  that leaves the root or repeats a run, a root another sweep holds or a
  --jobs the host cannot hold before the first run starts; with jobs = 1 a
  locked workdir, a corrupt checkpoint or a diverged run when it happens,
  with the runs before it kept in the summary; with jobs > 1 RunFailedError
  after all other runs finished). With a cluster, the rows are those of the
  runs finished so far; the others are queued (slurm.py).
  """
  plan = plan_runs(specs, seeds, root, overrides, seeds_by_spec)
  cache = _cache_dir(compile_cache, root)
  slots = None  # a refusal here leaves the root as it was
  if jobs > 1 and cluster == "none":
    host = devices_lib.detect(override=devices)
    # A CPU host takes any --jobs (unpinned past its cores), so no more workers
    # than runs: --jobs=10**8 built 10**8 slots. GPU and TPU hosts refuse first.
    slots = devices_lib.slots(host, min(jobs, len(plan)) if host.platform == "cpu" else jobs,
                              devices_per_run)
  with sweep_root.hold(root):
    if cluster != "none":
      return _sweep_cluster(plan, root, overrides, cluster, slurm_options, cache, verbose)
    if slots is not None:
      return _sweep_parallel(plan, root, overrides, slots, cache, verbose)
    from mem_diffusion.run import stages  # pylint: disable=g-import-not-at-top  # JAX loads after flag parsing
    runtime.setup(verbose=verbose, compile_cache=_cache_dir(compile_cache, root))
    rows = []
    for i, (_, seed, config, workdir) in enumerate(plan):
      print(f"[{i + 1}/{len(plan)}] {config.name} seed {seed} -> {workdir}", flush=True)
      start = time.time()
      report = stages.run(config, workdir, validate=False)
      rows.append(_file_row(plan, i, report, time.time() - start, root))
      _progress(i + 1, len(plan), config, seed, report, time.time() - start)
    return rows


def _finish_into(done: dict[int, dict[str, Any]], plan, root: str):
  """The callback that files run i's row and rewrites the summary."""

  def finish(i: int, report: dict[str, Any], seconds: float | None) -> None:
    _, seed, config, _ = plan[i]
    done[i] = _file_row(plan, i, report, seconds, root)
    _progress(i + 1, len(plan), config, seed, report, seconds)
  return finish


def _sweep_parallel(plan, root: str, overrides: Sequence[str], slots, cache: str,
                    verbose: bool) -> list[dict[str, Any]]:
  runtime.set_verbosity(verbose)
  done: dict[int, dict[str, Any]] = {}
  workers.run_parallel(plan, root, overrides, slots, cache, verbose,
                       _finish_into(done, plan, root))
  return [done[k] for k in sorted(done)]


def _sweep_cluster(plan, root: str, overrides: Sequence[str], cluster: str, options,
                   cache: str, verbose: bool) -> list[dict[str, Any]]:
  from mem_diffusion.experiments import slurm  # pylint: disable=g-import-not-at-top  # submitit only here
  runtime.set_verbosity(verbose)
  outcome = slurm.submit_and_collect(plan, root, overrides, cluster=cluster,
                                     options=options or slurm.Options(), cache=cache,
                                     verbose=verbose)
  rows = [row(plan[i][0], plan[i][2], plan[i][1], plan[i][3], report)
          for i, report in outcome.complete]
  for (i, _), r in zip(outcome.complete, rows):
    sweep_root.save_row(plan[i][3], r)
  if rows:
    write_outputs(sweep_root.finished_rows(root, [p[3] for p in plan]), root)
  return rows


def _worker(spec: str, seed: int, root: str, overrides: Sequence[str], *, cpu: int,
            compile_cache: str, verbose: bool) -> None:
  """One run of a parallel or SLURM sweep, in this process (pinned before JAX starts).

  USR2 is ignored: SLURM sends it to every process of a task before the time
  limit, and its default action would kill this one unsaved; the task
  (slurm.RunTask) answers it with the one SIGTERM that makes a run save.
  """
  signal.signal(signal.SIGUSR2, signal.SIG_IGN)
  if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
  from mem_diffusion.run import stages  # pylint: disable=g-import-not-at-top  # after pinning: XLA sizes its threads then
  ((_, _, config, workdir),) = plan_runs([spec], [seed], root, overrides)
  runtime.setup(verbose=verbose, compile_cache=compile_cache)
  print(f"{config.name} seed {seed}: train, sample, eval in {workdir}"
        + (f" (cpu {cpu})" if cpu >= 0 else ""), flush=True)
  stages.run(config, workdir, validate=False, summary=stages.print_summary)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if bool(FLAGS.configs) == bool(FLAGS.preset) or not FLAGS.root:
    cli.fail("--root and exactly one of --configs / --preset are required")
  preset = PRESETS[FLAGS.preset] if FLAGS.preset else None
  specs = list(preset.specs) if preset else split_specs(FLAGS.configs)
  overrides = list(preset.overrides if preset else ()) + list(FLAGS.set)
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    cli.fail(f"--seeds must be integers, got {','.join(FLAGS.seeds)}")
  if not seeds:
    cli.fail("--seeds is empty: give at least one seed, e.g. --seeds=0,1,2")
  # Before JAX starts; workers inherit both, and with --jobs > 1 only they compute.
  cli.prepare_process(FLAGS.xla_cpu_tuning, FLAGS.huge_pages,
                      restart=FLAGS.jobs == 1 and FLAGS.cluster == "none")
  if FLAGS.worker:
    if len(specs) != 1 or len(seeds) != 1:
      cli.fail("--worker runs exactly one config and one seed")
    cli.call(lambda: _worker(specs[0], seeds[0], FLAGS.root, overrides, cpu=FLAGS.pin_cpu,
                             compile_cache=FLAGS.compile_cache, verbose=FLAGS.verbose))
    return
  if FLAGS.cluster != "none" and FLAGS.jobs > 1:
    cli.fail(f"--jobs={FLAGS.jobs} is for --cluster=none; a cluster runs every run at once "
             "(--slurm_array_parallelism caps them)")
  from mem_diffusion.experiments import slurm  # pylint: disable=g-import-not-at-top
  rows = cli.call(lambda: sweep(
      specs, seeds, FLAGS.root, overrides, jobs=FLAGS.jobs, compile_cache=FLAGS.compile_cache,
      verbose=FLAGS.verbose, devices=FLAGS.devices, devices_per_run=FLAGS.devices_per_run,
      cluster=FLAGS.cluster, slurm_options=slurm.options_from_flags(FLAGS),
      seeds_by_spec=preset.seeds_by_spec(seeds) if preset else None))
  if rows:
    print(f"{len(rows)} runs; summary in {os.path.join(FLAGS.root, 'summary.md')}", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
