"""Where a toy run's time goes: the step alone, the real loop, a scan, a conv.

  python benchmarks/toy_step.py --mode=loop            # input pipeline + step, as train.py
  python benchmarks/toy_step.py --mode=alone --batch_size=48   # fixed batch, no pipeline
  python benchmarks/toy_step.py --mode=scan --block=16  # K steps inside one lax.scan
  python benchmarks/toy_step.py --mode=conv             # one 3x3 conv (+ its gradient) alone vs in a scan

Each mode prints one JSON line: milliseconds per step (best of --rounds
rounds) and the process's user and system CPU milliseconds per step over
all rounds. System time is the tell-tale of thread traffic: a step that
computes needs almost none. The config is the quickstart's toy model
(configs/quickstart.py); run it on an otherwise idle machine, or compare two
modes run back to back. docs/benchmarks.md ("Toy run") has the numbers.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import jax.numpy as jnp
import numpy as np

from mem_diffusion import config as config_loading, data  # pylint: disable=g-import-not-at-top,g-bad-import-order
from mem_diffusion.run import cpu_tuning, environment, parallel, state as state_lib, train  # pylint: disable=g-import-not-at-top,g-bad-import-order,g-multiple-import

flags.DEFINE_enum("mode", "loop", ["loop", "alone", "scan", "conv"], "What to time.")
flags.DEFINE_string("config", "configs/quickstart.py", "Config spec (file[:arg]).")
flags.DEFINE_integer("batch_size", 16, "Global batch size.")
flags.DEFINE_integer("steps", 300, "Steps per round (loop, alone).")
flags.DEFINE_integer("rounds", 2, "Rounds; the best is reported.")
flags.DEFINE_integer("block", 16, "Steps per lax.scan call (scan).")
cpu_tuning.define_flags(flags)
FLAGS = flags.FLAGS


def _cpu_ms() -> tuple[float, float]:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime * 1e3, r.ru_stime * 1e3


def _timed(run_round, steps_per_round: int) -> dict[str, float]:
  run_round()  # compile and warm up
  best, u0, s0 = float("inf"), *_cpu_ms()
  for _ in range(FLAGS.rounds):
    t0 = time.perf_counter()
    run_round()
    best = min(best, (time.perf_counter() - t0) * 1e3 / steps_per_round)
  u1, s1 = _cpu_ms()
  n = FLAGS.rounds * steps_per_round
  return {"ms_per_step": round(best, 2), "user_cpu_ms_per_step": round((u1 - u0) / n, 2),
          "sys_cpu_ms_per_step": round((s1 - s0) / n, 2)}


def _conv() -> dict[str, float]:
  """A 3x3 conv's input gradient alone and inside a 100-step scan."""
  x = jnp.ones((16, 8, 8, 64))
  w = jnp.full((3, 3, 64, 64), 0.01)

  def conv(v):
    return jax.lax.conv_general_dilated(v, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def grad(v):
    return jax.grad(lambda u: jnp.sum(conv(u) ** 2))(v)

  one = jax.jit(grad)
  looped = jax.jit(lambda v: jax.lax.scan(lambda c, _: (grad(c) * 1e-3, None), v, None,
                                          length=100)[0])
  alone = _timed(lambda: [one(x) for _ in range(100)][-1].block_until_ready(), 100)
  in_scan = _timed(lambda: looped(x).block_until_ready(), 100)
  return {"grad_conv_alone_ms": alone["ms_per_step"], "grad_conv_in_scan_ms": in_scan["ms_per_step"]}


def main(argv):
  del argv
  cpu_tuning.apply(xla_cpu_tuning=FLAGS.xla_cpu_tuning, huge_pages=FLAGS.huge_pages,
                   restart=True)  # before JAX starts, as main.py
  if FLAGS.mode == "conv":
    print(json.dumps({"mode": "conv", **_conv(), "environment": environment.facts()}))
    return
  config = config_loading.load_config(FLAGS.config)
  config.training.batch_size = b = FLAGS.batch_size
  mesh = parallel.data_mesh()
  step_fn = train.build(config, mesh)[-1]
  holder = {"state": state_lib.initial_state(config, mesh)}
  size = config.data.image_size
  rng = np.random.default_rng(0)
  fixed = parallel.to_global({
      "image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
      "label": np.zeros((b,), np.int32)}, mesh)

  if FLAGS.mode == "alone":
    def run_round():
      for _ in range(FLAGS.steps):
        holder["state"], m = step_fn(holder["state"], fixed)
      jax.block_until_ready(m)
    result = _timed(run_round, FLAGS.steps)
  elif FLAGS.mode == "loop":
    train_set = data.build_train_set(config.data)
    start = [0]

    def run_round():
      ds = data.make_dataset(train_set, config.data, global_batch_size=b, seed=0,
                             start_step=start[0], num_steps=FLAGS.steps)
      for batch in ds:
        holder["state"], m = step_fn(holder["state"], parallel.to_global(batch, mesh))
      start[0] += FLAGS.steps
      jax.block_until_ready(m)
    result = _timed(run_round, FLAGS.steps)
  else:  # scan: the same step body, FLAGS.block steps per compiled call
    raw = step_fn.__wrapped__
    k = FLAGS.block
    images = jnp.asarray(rng.uniform(-1, 1, (k, b, size, size, 3)).astype(np.float32))
    labels = jnp.zeros((k, b), jnp.int32)

    def many(state, xs, ys):
      def body(s, batch):
        s, m = raw(s, {"image": batch[0], "label": batch[1]})
        return s, m["loss_sum"]
      return jax.lax.scan(body, state, (xs, ys))
    scanned = jax.jit(many, donate_argnums=0)

    def run_round():
      holder["state"], losses = scanned(holder["state"], images, labels)
      losses.block_until_ready()
    result = _timed(run_round, k)
  print(json.dumps({"mode": FLAGS.mode, "config": config.name, "batch_size": b, **result,
                    "environment": environment.facts(mesh.devices.flat)}))


if __name__ == "__main__":
  app.run(main)
