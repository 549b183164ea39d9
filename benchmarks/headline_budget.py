"""Projected wall time of the headline pair on one H100, from the configs.

    python benchmarks/headline_budget.py            # short,bf16: the GPU command's configs
    python benchmarks/headline_budget.py --mfu=0.2  # the same at another utilisation

Why a projection: no H100 step rate of this UNet has been measured in this
repository (docs/benchmarks.md, "GPU check": prepared, not yet run), so the
seconds of benchmarks/headline_gpu.sh are counted, not timed. Compute is the
analytic forward FLOPs of the configured UNet (mem_diffusion.models.flops,
shapes traced only: seconds on a CPU): a train step costs 3 x forward per
image (forward plus a backward of twice its cost), a sampling step 1 x
forward per image and chain step. FLOPs become seconds at an assumed
utilisation (MFU) of the vendor's dense peak for the compute dtype
(benchmarks/gpu_check_report.py: H100 SXM 989.4 TFLOP/s bfloat16, 494.7 TF32
for float32). What FLOPs do not count is a fixed cost per run, assumed in
FIXED_S. The table's last line gives the most steps (multiples of
STEP_ROUNDING) that fit LIMIT_S at this MFU: the 'short' step count
(configs/mondrian_2k.py SHORT_STEPS). docs/headline_gpu.md prints this
script's table; tests keep the two equal.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(_HERE)
sys.path[:0] = [REPO, _HERE]

import gpu_check_report  # pylint: disable=g-import-not-at-top,wrong-import-position

DEVICE_KIND = "NVIDIA H100 80GB HBM3"  # JAX's name of an H100 SXM
MFU = 0.30  # the low end of 30-40%: a 32x32 UNet has GroupNorm/SiLU/attention glue the peak ignores
LIMIT_S = 540.0  # the GPU command's target: 9 minutes for both runs
CONFIGS = ("configs/mondrian_2k.py", "configs/mondrian_2k_gm_6k.py")
ARG = "short,bf16"
# Where the toy study's replicate ratio fell through 0.1, in training draws per
# image (docs/results.md, section 1: 2,000 x 16 / 117 at its 2,000-step budget).
TOY_CROSSING_DRAWS = 274
# The most draws per image at which the toy copied nothing (the same table:
# N = 240 at 2,000 steps x batch 16, ratio 0.000 in all three seeds).
TOY_ZERO_DRAWS = 133
STEP_ROUNDING = 500  # 'short' takes the largest multiple of this that fits LIMIT_S
# Seconds per run that FLOPs do not count; assumptions, not measurements, except
# where said. A fresh process each run: the second run's model is conditional,
# so no compiled program carries over.
FIXED_S = {
    "start": 15,  # Python, JAX, TensorFlow imports and the GPU runtime
    "data": 5,  # 2k Mondrian (+6k GM) built on the host: 5 s measured on the 2-core CPU
    "compile train step": 60,  # UNet-128 + Adam + EMA, with cuDNN autotuning
    "compile sampler": 20,
    "checkpoint and records": 5,  # ~0.8 GB of params, EMA and Adam moments; digests
    "eval": 15,  # replicate test, quality features, figures: 10-15 s measured on the CPU
}


def _peak(compute_dtype: str) -> float:
  tflops, _ = gpu_check_report.spec_peak(DEVICE_KIND, compute_dtype, None)
  return tflops * 1e12


def project(config, mfu: float = MFU) -> dict:
  """Seconds and draws of one run of `config` on one H100 at `mfu`."""
  from mem_diffusion.diffusion import respace  # pylint: disable=g-import-not-at-top
  from mem_diffusion.models import flops, unet  # pylint: disable=g-import-not-at-top
  model = unet.unet_from_config(config.model, config.data.image_size)
  forward = flops.forward_flops(model, config.data.image_size)
  rate = mfu * _peak(config.model.compute_dtype)
  t, s, d = config.training, config.sampling, config.data
  train_images = t.num_steps * t.batch_size
  chain = len(respace.space_timesteps(config.diffusion.steps, s.respacing))
  sampled = math.ceil(s.num_samples / s.batch_size) * s.batch_size  # padded last chunk
  if d.sampling == "balanced":  # a fixed share of every batch is original
    draws = t.num_steps * round(d.original_share * t.batch_size) / d.num_original
  else:  # 'uniform': every image, original or dummy, equally often
    draws = train_images / (d.num_original + d.num_dummy)
  out = {"name": config.name, "forward_gflop": forward / 1e9, "peak_flops": rate / mfu,
         "train_images": train_images,
         "train_s": 3 * forward * train_images / rate, "chain_steps": chain,
         "num_samples": s.num_samples, "sample_s": forward * sampled * chain / rate,
         "fixed_s": float(sum(FIXED_S.values())), "draws_per_original": draws,
         "num_steps": t.num_steps}
  out["total_s"] = out["train_s"] + out["sample_s"] + out["fixed_s"]
  return out


def load(spec: str):
  from mem_diffusion import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config(os.path.join(REPO, spec))


def projection(arg: str = ARG, mfu: float = MFU) -> list[dict]:
  return [project(load(f"{c}:{arg}"), mfu) for c in CONFIGS]


def break_even_mfu(rows: list[dict], mfu: float = MFU, limit_s: float = LIMIT_S) -> float:
  """The lowest MFU at which the runs of `rows` (projected at `mfu`) fit `limit_s`."""
  compute = sum(r["train_s"] + r["sample_s"] for r in rows) * mfu  # seconds at MFU 1
  fixed = sum(r["fixed_s"] for r in rows)
  return compute / (limit_s - fixed) if limit_s > fixed else math.inf


def largest_steps(rows: list[dict], limit_s: float = LIMIT_S,
                  rounding: int = STEP_ROUNDING) -> int:
  """The most steps, a multiple of `rounding`, at which the runs of `rows`
  (all at one step count; training seconds scale with it) fit `limit_s`."""
  steps = {r["num_steps"] for r in rows}
  assert len(steps) == 1, f"runs at different step counts: {sorted(steps)}"
  per_step = sum(r["train_s"] for r in rows) / steps.pop()
  room = limit_s - sum(r["sample_s"] + r["fixed_s"] for r in rows)
  return max(int(room / per_step) // rounding * rounding, 0)


def total_at(rows: list[dict], num_steps: int) -> float:
  """Seconds of the runs of `rows` if each trained `num_steps` steps."""
  return sum(r["total_s"] + r["train_s"] * (num_steps / r["num_steps"] - 1) for r in rows)


def markdown(rows: list[dict], mfu: float = MFU) -> str:
  lines = ["| run | forward GFLOP/image | train images | train s | samples x chain steps "
           "| sample s | fixed s | total s | draws per Mondrian |", "|---|" + "---|" * 8]
  for r in rows:
    lines.append(f"| {r['name']} | {r['forward_gflop']:.2f} | {r['train_images']:,} | "
                 f"{r['train_s']:.0f} | {r['num_samples']:,} x {r['chain_steps']} | "
                 f"{r['sample_s']:.0f} | {r['fixed_s']:.0f} | {r['total_s']:.0f} | "
                 f"{r['draws_per_original']:,.0f} |")
  total = sum(r["total_s"] for r in rows)
  lines.append(f"| both | | | {sum(r['train_s'] for r in rows):.0f} | | "
               f"{sum(r['sample_s'] for r in rows):.0f} | {sum(r['fixed_s'] for r in rows):.0f}"
               f" | {total:.0f} ({total / 60:.1f} min) | |")
  lines.append("")
  lines.append(f"MFU {mfu:.0%} of the dense peak; fixed s per run: "
               + ", ".join(f"{k} {v}" for k, v in FIXED_S.items())
               + f". Fits {LIMIT_S / 60:.0f} min down to MFU {break_even_mfu(rows, mfu):.1%}.")
  most = largest_steps(rows)
  lines.append(f"Most steps that fit {LIMIT_S / 60:.0f} min at this MFU, in multiples of "
               f"{STEP_ROUNDING}: {most:,} ({most + STEP_ROUNDING:,} steps project "
               f"{total_at(rows, most + STEP_ROUNDING):.0f} s); without the fixed s, "
               f"{largest_steps([dict(r, fixed_s=0.0) for r in rows]):,}.")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arg", default=ARG, help="config argument of both files")
  parser.add_argument("--mfu", type=float, default=MFU, help="assumed utilisation, 0..1")
  args = parser.parse_args(argv)
  if not 0 < args.mfu <= 1:
    parser.error(f"--mfu={args.mfu}: expected a number in (0, 1]")
  print(markdown(projection(args.arg, args.mfu), args.mfu))
  return 0


if __name__ == "__main__":
  sys.exit(main())
