"""The UNet-128 train step at one batch, run as different numbers of micro-batches.

  python benchmarks/micro_batches.py --batch_size=32 --micro_batches=8,4,2,1

Every split is compiled first; then each round times `--steps` steps of each
split in turn, so a busy minute slows all of them. Reported: the best round's
images/s per split and the minor page faults per step (getrusage). This is
the measurement behind CPU_MICRO_BATCH_ELEMENTS in
mem_diffusion/run/micro_batches.py; the splits run exactly as the project runs
them on CPU (separately jitted micro-batch calls and one update).
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

from mem_diffusion import huge_pages  # pylint: disable=g-import-not-at-top,g-bad-import-order
from mem_diffusion.run import parallel, state, train  # pylint: disable=g-import-not-at-top,g-bad-import-order

config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_list("micro_batches", ["4", "1"], "Numbers of micro-batches to compare.")
flags.DEFINE_integer("steps", 2, "Timed steps per split per round.")
flags.DEFINE_integer("rounds", 3, "Rounds; the best of each split is reported.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
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
    compiled = step.lower(state.initial_state(config, mesh), batch).compile()
    train_state, stats = compiled(state.initial_state(config, mesh), batch)  # warm-up
    jax.block_until_ready(stats)
    runs[a] = [compiled, train_state]
    print(f"{a} micro-batches of {b // a}: compiled and warmed up in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
  best = {a: float("inf") for a in splits}
  faults = {}
  for r in range(FLAGS.rounds):
    for a in splits:
      compiled, train_state = runs[a]
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter()
      for _ in range(FLAGS.steps):
        train_state, stats = compiled(train_state, batch)
      jax.block_until_ready((train_state.params, stats))
      seconds = (time.perf_counter() - t0) / FLAGS.steps
      faults[a] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / FLAGS.steps
      runs[a][1] = train_state
      best[a] = min(best[a], seconds)
      print(f"round {r + 1}: {a} x {b // a}: {b / seconds:.3f} images/s, "
            f"{faults[a] / 1e3:.0f}k minor faults/step", flush=True)
  print(json.dumps({
      "config": config.name, "batch_size": b,
      "images_per_second": {str(a): round(b / best[a], 3) for a in splits},
      "minor_faults_per_step": {str(a): int(faults[a]) for a in splits},
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "xla_flags": os.environ.get("XLA_FLAGS", "")}))


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()  # as main.py does
  app.run(main)
