"""The UNet-128 train step at one batch, run as different numbers of micro-batches.

  python benchmarks/micro_batches.py --batch_size=32 --micro_batches=8,4,2,1

Every split is compiled first; then each round times `--steps` steps of each
split in turn, so a busy minute slows all of them. Reported: the best round's
images/s per split, its least CPU time (user + system) per step, the minor
page faults per step (getrusage) and the process's environment
(mem_diffusion/run/environment.py). The splits run as training.micro_batches
runs them (mem_diffusion/run/micro_batches.py); this is the measurement
behind the CPU advice in docs/training.md.
"""

import json
import os
import resource
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mem_diffusion.run import cpu_tuning, environment, micro_batches, parallel, state, train  # pylint: disable=g-import-not-at-top,g-bad-import-order,g-multiple-import

config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_list("micro_batches", ["4", "1"], "Numbers of micro-batches to compare.")
flags.DEFINE_integer("steps", 2, "Timed steps per split per round.")
flags.DEFINE_integer("rounds", 3, "Rounds; the best of each split is reported.")
cpu_tuning.define_flags(flags)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cpu_tuning.apply(xla_cpu_tuning=FLAGS.xla_cpu_tuning, huge_pages=FLAGS.huge_pages,
                   restart=True)  # before JAX starts, as main.py
  config = FLAGS.config
  b = config.training.batch_size = FLAGS.batch_size
  splits = [int(a) for a in FLAGS.micro_batches]
  for a in splits:
    if a < 1 or b % a:
      raise app.UsageError(f"--micro_batches: {a} does not divide --batch_size={b}")
  mesh = parallel.data_mesh()
  parts = state.parts(config)
  size = config.data.image_size
  rng = np.random.default_rng(0)
  batch = parallel.to_global({
      "image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
      "label": np.zeros((b,), np.int32)}, mesh)
  runs = {}
  for a in splits:
    step = train.make_train_step(*parts[:4], config, mesh, accum=a)
    t0 = time.perf_counter()
    compiled, _ = micro_batches.compile_step(step, state.initial_state(config, mesh), batch)
    train_state, stats = compiled(state.initial_state(config, mesh), batch)  # warm-up
    jax.block_until_ready(stats)
    runs[a] = [compiled, train_state]
    print(f"{a} micro-batches of {b // a}: compiled and warmed up in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
  best = {a: float("inf") for a in splits}
  faults, cpu = {}, {a: float("inf") for a in splits}
  for r in range(FLAGS.rounds):
    for a in splits:
      compiled, train_state = runs[a]
      r0 = resource.getrusage(resource.RUSAGE_SELF)
      t0 = time.perf_counter()
      for _ in range(FLAGS.steps):
        train_state, stats = compiled(train_state, batch)
      jax.block_until_ready((train_state.params, stats))
      seconds = (time.perf_counter() - t0) / FLAGS.steps
      r1 = resource.getrusage(resource.RUSAGE_SELF)
      faults[a] = (r1.ru_minflt - r0.ru_minflt) / FLAGS.steps
      cpu[a] = min(cpu[a], (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / FLAGS.steps)
      runs[a][1] = train_state
      best[a] = min(best[a], seconds)
      print(f"round {r + 1}: {a} x {b // a}: {b / seconds:.3f} images/s, "
            f"{faults[a] / 1e3:.0f}k minor faults/step", flush=True)
  print(json.dumps({
      "config": config.name, "batch_size": b,
      "images_per_second": {str(a): round(b / best[a], 3) for a in splits},
      "minor_faults_per_step": {str(a): int(faults[a]) for a in splits},
      "cpu_seconds_per_step": {str(a): round(cpu[a], 3) for a in splits},
      "environment": environment.facts(mesh.devices.flat)}))


if __name__ == "__main__":
  app.run(main)
