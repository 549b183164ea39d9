"""Train-step throughput: compile time, images/s, achieved GFLOP/s.

  python benchmarks/train_step.py --config=configs/default.py --batch_size=8 --steps=5

The achieved rate uses XLA's own FLOP count of the compiled step
(`compiled.cost_analysis()`), and is set beside a dense float32 matmul timed in
the same process on the same devices, so that a loaded or throttled machine
moves both numbers together. The last line printed is JSON with
images_per_second, gflops_per_second, matmul_gflops_per_second,
compile_seconds (and a few more fields).
"""

import json
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

from mem_diffusion import parallel, state, train  # pylint: disable=g-import-not-at-top,g-bad-import-order
from matmul_rate import matmul_gflops  # pylint: disable=g-import-not-at-top,g-bad-import-order

config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
flags.DEFINE_integer("batch_size", 8, "Global batch size (all devices).")
flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n float32 matmul.")
flags.DEFINE_string("compute_dtype", "", "Override model.compute_dtype (float32 | bfloat16).")
FLAGS = flags.FLAGS


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def main(argv):
  del argv
  config = FLAGS.config
  config.training.batch_size = FLAGS.batch_size
  config.training.grad_accum_steps = 1
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
  compiled = step_fn.lower(train_state, batch).compile()
  compile_seconds = time.perf_counter() - t0
  flops_per_step = _flops(compiled)

  train_state, stats = compiled(train_state, batch)  # warm-up
  jax.block_until_ready(stats)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    train_state, stats = compiled(train_state, batch)
  jax.block_until_ready((train_state.params, stats))
  seconds = (time.perf_counter() - t0) / FLAGS.steps

  mm = matmul_gflops(FLAGS.matmul_size, mesh)
  gflops = flops_per_step / seconds / 1e9
  result = {
      "config": config.name,
      "batch_size": FLAGS.batch_size,
      "compute_dtype": config.model.compute_dtype,
      "devices": f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
      "compile_seconds": round(compile_seconds, 2),
      "seconds_per_step": round(seconds, 4),
      "images_per_second": round(FLAGS.batch_size / seconds, 3),
      "xla_gflop_per_step": round(flops_per_step / 1e9, 2),
      "gflops_per_second": round(gflops, 2),
      "matmul_gflops_per_second": round(mm, 2),
      "fraction_of_matmul": round(gflops / mm, 3),
  }
  print(f"compile {compile_seconds:.1f} s; {seconds:.3f} s/step; "
        f"{result['images_per_second']} images/s; {gflops:.1f} GFLOP/s "
        f"({result['fraction_of_matmul']:.0%} of a {mm:.1f} GFLOP/s matmul)")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
