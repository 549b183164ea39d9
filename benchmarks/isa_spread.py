"""How much does the CPU instruction set move a memorizing toy run?

XLA:CPU compiles for the host's instruction set, so rounding, and with it a
whole training trajectory, differs between an AVX2 and an AVX-512 machine.
This runs the science test's setup (tests/test_science.py: the toy model on
4 Mondrians) for several seeds and reports the replicate ratio at a few
training lengths, under whatever XLA_FLAGS are in force. Run it twice to
compare instruction sets on one machine:

  PYTHONPATH=. python benchmarks/isa_spread.py --seeds 0,1,2
  XLA_FLAGS=--xla_cpu_max_isa=AVX2 PYTHONPATH=. python benchmarks/isa_spread.py --seeds 0,1,2

The margins of the trajectory-dependent tests were chosen from this spread
(docs/reliability.md, "Determinism contract").
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from configs import toy_capacity
from mem_diffusion import data
from mem_diffusion.run import parallel, sampling, train
from mem_diffusion.analysis import replicates
from mem_diffusion.run import state as state_lib


def _config(num_images: int, steps: int, seed: int):
  config = toy_capacity.get_config(f"{num_images},steps={steps}")
  config.training.learning_rate = 2e-3
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64
  config.seed = seed
  return config


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--checkpoints", default="800,1200,1600",
                      help="training steps at which to sample and score")
  parser.add_argument("--num_images", type=int, default=4)
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  marks = sorted(int(s) for s in args.checkpoints.split(","))
  mesh = parallel.data_mesh(jax.devices()[:1])
  rows = []
  for seed in seeds:
    config = _config(args.num_images, marks[-1], seed)
    train_set = data.build_train_set(config.data)
    *_, train_step = train.build(config, mesh)
    state = state_lib.initial_state(config, mesh)
    sampler = sampling.make_chunk_sampler(config, mesh)
    dataset = data.make_dataset(train_set, config.data,
                                global_batch_size=config.training.batch_size,
                                seed=config.seed, start_step=0, num_steps=marks[-1])
    for step, batch in enumerate(dataset, start=1):
      state, _ = train_step(state, parallel.to_global(batch, mesh))
      if step in marks:
        samples = np.asarray(parallel.fetch(sampler(state.ema_params, jax.random.PRNGKey(1234))))
        report, per_sample = replicates.analyze(samples, train_set.images, blend_k=0)
        copied = np.unique(per_sample["nn1"][per_sample["is_replicate"]]).size
        row = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "seed": seed, "step": step,
               "ratio": report["replicate_ratio"], "distinct_copied": int(copied)}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
