"""Data throughput next to what a UNet-128 train step would consume.

Measures, in one run on this machine:
- images/s of each dummy generator (jitted, after compilation);
- images/s of the input pipeline (plan, gather, convert, slice) at the
  study's batch size, in 'uniform' and in 'balanced' + flip mode;
- a float32 matmul rate, from which the UNet-128 consumption rate is
  ESTIMATED as rate / (3 x 16.8 GFLOP per image): one train step costs about
  three forward passes of 16.8 GFLOP (docs/reference.md#unet-size). That is an upper bound on
  what the model could eat (real convolutions/attention run below matmul
  peak), so "data / UNet" ratios above 1 mean the data side is not the limit.

  python benchmarks/data_pipeline.py            # prints a table and a JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from configs import default
from mem_diffusion import data
from mem_diffusion.data import generators, geometric, mondrian
from matmul_rate import matmul_gflops  # pylint: disable=g-bad-import-order

UNET128_TRAIN_FLOP_PER_IMAGE = 3 * 16.8e9


def _rate(fn, n_items: int, repeats: int = 3) -> float:
  fn()  # compile / warm up
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return n_items / best


def generator_rates(size: int, n: int) -> dict[str, float]:
  ids = np.arange(n)
  cars = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  fns = {
      "mondrian": lambda: mondrian.mondrian_images(0, ids, size),
      "gm": lambda: generators.gm_images(0, ids, size),
      "geometric": lambda: geometric.geometric_images(0, ids, size),
      # Random stand-in cars: the FFT mixing costs the same on any pixels.
      "hybrid": lambda: generators.hybrid_images(0, ids, cars, 0.25),
  }
  return {k: _rate(f, n) for k, f in fns.items()}


def pipeline_rates(size: int, batch: int, steps: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  n_orig, n_dummy = 2000, 4000
  n = n_orig + n_dummy
  ts = data.TrainSet(
      images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      labels=np.array([0] * n_orig + [1] * n_dummy, np.int32),
      sources=np.array(["cifar10"] * n_orig + ["gm"] * n_dummy),
      indices=np.arange(n), num_classes=2, num_original=n_orig,
      car_indices=np.full(n, -1), split={})
  out = {}
  for name, kw in [("uniform", {}), ("balanced_hflip", {"sampling": "balanced", "hflip": True})]:
    cfg = default.get_config().data
    cfg.dataset, cfg.dummy_kind, cfg.num_dummy = "cifar_cars", "gm", n_dummy
    for k, v in kw.items():
      setattr(cfg, k, v)

    def run():
      ds = data.make_dataset(ts, cfg, global_batch_size=batch, seed=0, start_step=0,
                             num_steps=steps)
      for b in ds:
        b["image"].sum()  # touch the batch, as device transfer would
    out[name] = _rate(run, steps * batch, repeats=2)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--num_images", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=100)
  args = parser.parse_args()
  gens = generator_rates(args.size, args.num_images)
  pipe = pipeline_rates(args.size, args.batch, args.steps)
  gflops = matmul_gflops()
  unet = gflops * 1e9 / UNET128_TRAIN_FLOP_PER_IMAGE
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"images {args.size}x{args.size}")
  print(f"float32 matmul: {gflops:.1f} GFLOP/s -> UNet-128 train step would consume "
        f"<= {unet:.2f} images/s (ESTIMATE: rate / 3 x 16.8 GFLOP)")
  for k, v in {**{f"generator {k}": v for k, v in gens.items()},
               **{f"pipeline {k} (B={args.batch})": v for k, v in pipe.items()}}.items():
    print(f"{k:34s} {v:12.0f} images/s   {v / unet:10.0f} x UNet-128 estimate")
  print(json.dumps({
      "benchmark": "data_pipeline", "device": jax.devices()[0].device_kind,
      "image_size": args.size, "generator_images_per_s": gens,
      "pipeline_images_per_s": pipe, "matmul_gflops_f32": gflops,
      "unet128_train_images_per_s_estimate": unet,
      "min_ratio_data_over_unet": min(list(gens.values()) + list(pipe.values())) / unet,
  }))


if __name__ == "__main__":
  main()
