"""Train-step throughput beside a matmul and, optionally, the PyTorch reference.

  python benchmarks/train_step.py --config=configs/default.py --batch_size=8
  python benchmarks/train_step.py --config=configs/default.py --batch_size=8 \
      --reference=PATH/torch_bench.py --reference_python=PATH/venv/bin/python

The machine may be shared, so nothing is timed once: the benchmark runs
`--rounds` rounds, and each round times `--steps` train steps, then a dense
float32 matmul, then (with --reference) the PyTorch reference's train step at
the same batch in a child process. Every figure is the best round's, and
because the three alternate, a busy minute slows all of them rather than
one. The achieved rate uses XLA's own FLOP count of the compiled step
(`compiled.cost_analysis()`).

The reference is openai/improved-diffusion's UNet-128 timed by a script that
prints one JSON line with `images_per_second` (e.g. its torch_bench.py with
`--device cpu --batch B --steps S`); it runs with the same thread count as
this process has cores, and the ratio ours / reference is reported.

The last line printed is JSON: images_per_second, cpu_seconds_per_step
(user + system time of the whole process over the timed steps: less
sensitive to other jobs than the wall clock), gflops_per_second,
matmul_gflops_per_second, fraction_of_matmul, compile_seconds, and with a
reference reference_images_per_second and ratio_to_reference, plus the
process's environment (XLA_FLAGS, GLIBC_TUNABLES, versions, device:
mem_diffusion/run/environment.py). Like main.py, it applies the CPU tuning
first (`--xla_cpu_tuning`, mem_diffusion/run/cpu_tuning.py); the reference
child gets this process's environment.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

from mem_diffusion.run import cpu_tuning, environment, micro_batches, parallel, state, train  # pylint: disable=g-import-not-at-top,g-bad-import-order,g-multiple-import
from matmul_rate import matmul_gflops  # pylint: disable=g-import-not-at-top,g-bad-import-order

config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
flags.DEFINE_integer("batch_size", 8, "Global batch size (all devices).")
flags.DEFINE_integer("steps", 5, "Timed steps per round (after one warm-up step).")
flags.DEFINE_integer("rounds", 3, "Rounds of (train steps, matmul, reference); the best of each is reported.")
flags.DEFINE_string("reference", "", "A reference timing script (e.g. torch_bench.py) run each round.")
flags.DEFINE_string("reference_python", sys.executable, "The Python that runs --reference (one with torch).")
flags.DEFINE_integer("reference_steps", 3, "Steps the reference times per round.")
flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n float32 matmul.")
flags.DEFINE_integer("micro_batches", 1, "Micro-batches per step (training.micro_batches).")
flags.DEFINE_string("compute_dtype", "", "Override model.compute_dtype (float32 | bfloat16).")
cpu_tuning.define_flags(flags)
FLAGS = flags.FLAGS


def _reference_env(threads: str) -> dict[str, str]:
  return {**os.environ, "THREADS": threads}


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _reference_images_per_second() -> float:
  """One run of the reference script; its JSON line's images_per_second."""
  threads = str(len(os.sched_getaffinity(0)))
  cmd = [FLAGS.reference_python, FLAGS.reference, "--device", "cpu",
         "--batch", str(FLAGS.batch_size), "--steps", str(FLAGS.reference_steps)]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       env=_reference_env(threads))
  if out.returncode != 0:
    raise SystemExit(f"reference failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
  for line in reversed(out.stdout.splitlines()):
    if line.startswith("{"):
      return float(json.loads(line)["images_per_second"])
  raise SystemExit(f"reference printed no JSON line: {out.stdout[-500:]}")


def main(argv):
  del argv
  cpu_tuning.apply(xla_cpu_tuning=FLAGS.xla_cpu_tuning, huge_pages=FLAGS.huge_pages,
                   restart=True)  # before JAX starts, as main.py
  config = FLAGS.config
  config.training.batch_size = FLAGS.batch_size
  config.training.micro_batches = FLAGS.micro_batches
  if FLAGS.compute_dtype:
    config.model.compute_dtype = FLAGS.compute_dtype
  mesh = parallel.data_mesh()
  step_fn = train.build(config, mesh)[-1]
  train_state = state.initial_state(config, mesh)
  size = config.data.image_size
  rng = np.random.default_rng(0)
  batch = parallel.to_global({
      "image": rng.uniform(-1, 1, (FLAGS.batch_size, size, size, 3)).astype(np.float32),
      "label": np.zeros((FLAGS.batch_size,), np.int32)}, mesh)

  t0 = time.perf_counter()
  compiled, flops_per_step = micro_batches.compile_step(step_fn, train_state, batch)
  compile_seconds = time.perf_counter() - t0

  train_state, stats = compiled(train_state, batch)  # warm-up
  jax.block_until_ready(stats)
  seconds, mm, ref, cpu = float("inf"), 0.0, 0.0, 0.0
  for r in range(FLAGS.rounds):
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for _ in range(FLAGS.steps):
      train_state, stats = compiled(train_state, batch)
    jax.block_until_ready((train_state.params, stats))
    seconds = min(seconds, (time.perf_counter() - t0) / FLAGS.steps)
    cpu += (_cpu_seconds() - c0) / FLAGS.steps / FLAGS.rounds
    mm = max(mm, matmul_gflops(FLAGS.matmul_size, mesh, repeats=2))
    if FLAGS.reference:
      ref = max(ref, _reference_images_per_second())
    print(f"round {r + 1}/{FLAGS.rounds}: best so far {FLAGS.batch_size / seconds:.3f} "
          f"images/s" + (f", reference {ref:.3f}" if ref else ""), flush=True)

  gflops = flops_per_step / seconds / 1e9
  result = {
      "config": config.name,
      "batch_size": FLAGS.batch_size,
      "micro_batches": FLAGS.micro_batches,
      "compute_dtype": config.model.compute_dtype,
      "devices": f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
      "compile_seconds": round(compile_seconds, 2),
      "seconds_per_step": round(seconds, 4),
      "images_per_second": round(FLAGS.batch_size / seconds, 3),
      "cpu_seconds_per_step": round(cpu, 3),
      "xla_gflop_per_step": round(flops_per_step / 1e9, 2),
      "gflops_per_second": round(gflops, 2),
      "matmul_gflops_per_second": round(mm, 2),
      "fraction_of_matmul": round(gflops / mm, 3),
      "rounds": FLAGS.rounds,
      "steps_per_round": FLAGS.steps,
      "environment": environment.facts(mesh.devices.flat, micro_batches=FLAGS.micro_batches),
  }
  if ref:
    result["reference_images_per_second"] = round(ref, 3)
    result["ratio_to_reference"] = round(FLAGS.batch_size / seconds / ref, 3)
  print(f"compile {compile_seconds:.1f} s; {seconds:.3f} s/step; "
        f"{result['images_per_second']} images/s; {gflops:.1f} GFLOP/s "
        f"({result['fraction_of_matmul']:.0%} of a {mm:.1f} GFLOP/s matmul)"
        + (f"; {result['ratio_to_reference']:.2f}x the reference" if ref else ""))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
