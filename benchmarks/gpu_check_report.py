"""The GPU check's arithmetic and table: peaks, MFU, projections, markdown.

Standard library only, so that its numbers can be checked without a device.

MFU is given twice, each against a named peak. The spec peak is the vendor's
dense figure for the device and the step's compute dtype: what MFU means in
papers, and what a reader compares across machines. The measured peak is a
bfloat16 matmul timed in the same process, i.e. what this software stack
attains (on an H100 SXM about 800 of the 989 TFLOP/s), so MFU against it
reads about 1.25x higher there; it is also the only peak a CPU smoke run has.
"""

from __future__ import annotations

import math
from typing import Any

DTYPES = ("float32", "bfloat16")
# The study of README.md, "The full-scale experiments": its sweep command's
# configs (tests/test_gpu_check.py keeps the two in step), 3 seeds each.
STUDY_CONFIGS = ("cars_2k", "gm_1k", "gm_2k", "gm_4k", "hybrid_1k", "hybrid_2k", "hybrid_4k")
STUDY_SEEDS = 3
RESPACED_STEPS = 250

# Dense (no sparsity) TFLOP/s from the vendors' data sheets: bfloat16, TF32
# and plain float32 on the CUDA cores; None where the sheet gives none.
SPEC_PEAKS = {
    "H100 SXM": {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9},
    "H200": {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9},  # the H100 SXM's chip
    "H100 PCIe": {"bfloat16": 756.5, "tf32": 378.0, "float32": 51.2},
    "A100": {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5},
    "TPU v4": {"bfloat16": 275.0, "tf32": None, "float32": None},
    "TPU v5 lite": {"bfloat16": 197.0, "tf32": None, "float32": None},
    "TPU v5p": {"bfloat16": 459.0, "tf32": None, "float32": None},
    "TPU v6 lite": {"bfloat16": 918.0, "tf32": None, "float32": None},
}

# JAX's device_kind of each TPU in SPEC_PEAKS.
TPU_KINDS = {"TPU v4": "TPU v4", "TPU v5 lite": "TPU v5 lite", "TPU v5": "TPU v5p",
             "TPU v5p": "TPU v5p", "TPU v6 lite": "TPU v6 lite"}


def spec_device(device_kind: str) -> str | None:
  """The SPEC_PEAKS row of a JAX device_kind ('NVIDIA H100 80GB HBM3' -> 'H100 SXM')."""
  kind = device_kind.upper()
  if "H200" in kind:
    return "H200"
  if "H100" in kind:
    if "PCIE" in kind:
      return "H100 PCIe"
    return "H100 SXM" if ("HBM3" in kind or "SXM" in kind) else None  # NVL: not listed
  if "A100" in kind:
    return "A100"
  return TPU_KINDS.get(device_kind)


def spec_peak(device_kind: str, dtype: str, matmul_precision: str | None
              ) -> tuple[float, str] | None:
  """(TFLOP/s, name) of the spec peak a `dtype` step runs against, or None.

  A float32 step runs its convolutions and matmuls on the TF32 tensor cores
  under JAX's default precision on the GPU, so TF32 is its peak; with
  jax_default_matmul_precision 'highest'/'float32' it is plain float32.
  """
  device = spec_device(device_kind)
  if device is None:
    return None
  unit = dtype
  if dtype == "float32":
    unit = "float32" if str(matmul_precision).lower() in ("highest", "float32") else "tf32"
  value = SPEC_PEAKS[device][unit]
  if value is None:
    return None
  return value, f"{device} dense {'TF32' if unit == 'tf32' else unit} {value:g} TFLOP/s"


def mfu_fields(flops: float, model_flops: float, seconds: float, matmul_tflops: float,
               spec: tuple[float, str] | None) -> dict[str, Any]:
  """MFU of one timed program against both peaks, from XLA's and the analytic FLOPs."""
  rate, model_rate = flops / seconds / 1e12, model_flops / seconds / 1e12
  return {"tflops_per_second": rate,
          "mfu_vs_matmul": rate / matmul_tflops, "model_mfu_vs_matmul": model_rate / matmul_tflops,
          "spec_peak_tflops": spec[0] if spec else None, "spec_peak": spec[1] if spec else None,
          "mfu_vs_spec": rate / spec[0] if spec else None,
          "model_mfu_vs_spec": model_rate / spec[0] if spec else None}


def projections(result: dict, n_train: int, chain_steps: int, n_samples: int) -> dict:
  """Hours of the study's pieces on this device, per compute dtype."""
  out = {}
  for dtype in DTYPES:
    train = result["train"].get(dtype)
    samp = result["sampling_step"].get(dtype)
    if not (train and samp):
      continue
    train_h = n_train * train["seconds_per_step"] / 3600
    rate = samp["image_steps_per_second"]
    full_h = n_samples * chain_steps / rate / 3600
    respaced_h = n_samples * RESPACED_STEPS / rate / 3600
    runs = len(STUDY_CONFIGS) * STUDY_SEEDS
    out[dtype] = {"train_steps": n_train, "train_hours": train_h,
                  "samples": n_samples, "sample_full_chain_hours": full_h,
                  "sample_respaced_250_hours": respaced_h,
                  "study_configs": list(STUDY_CONFIGS), "study_runs": runs,
                  "study_full_chain_hours": runs * (train_h + full_h),
                  "study_respaced_250_hours": runs * (train_h + respaced_h)}
  return out


def markdown(r: dict) -> str:
  """The JSON as one table: rows are measurements, columns the compute dtype."""
  d, mm, ref = r["device"], r.get("matmul") or {}, r.get("reference") or {}
  train_b = (r["train"].get("float32") or {}).get("batch_size", "?")
  samp_b = (r["sampling_step"].get("float32") or {}).get("batch_size", "?")
  measured = f"measured bf16 matmul, {mm.get('tflops_per_second', math.nan):.4g} TFLOP/s"
  runs = len(STUDY_CONFIGS) * STUDY_SEEDS

  gib = 2.0 ** -30
  # (label, path into the JSON with {dtype} filled in per column, format, scale)
  rows = [
      (f"train images/s (batch {train_b})", "train/{dtype}/images_per_second", ".4g", 1),
      ("train step ms", "train/{dtype}/seconds_per_step", ".4g", 1e3),
      ("XLA GFLOP per step", "train/{dtype}/xla_flops_per_step", ".4g", 1e-9),
      ("achieved TFLOP/s", "train/{dtype}/tflops_per_second", ".3g", 1),
      ("spec peak TFLOP/s (dense, this dtype)", "train/{dtype}/spec_peak_tflops", ".4g", 1),
      ("MFU vs spec peak (XLA FLOPs)", "train/{dtype}/mfu_vs_spec", ".3f", 1),
      ("MFU vs spec peak (3 x analytic forward FLOPs)", "train/{dtype}/model_mfu_vs_spec",
       ".3f", 1),
      (f"MFU vs {measured} (XLA FLOPs)", "train/{dtype}/mfu_vs_matmul", ".3f", 1),
      ("compile s", "train/{dtype}/compile_seconds", ".1f", 1),
      ("device peak GiB (high-water mark)", "train/{dtype}/device_peak_bytes_so_far", ".3g", gib),
      ("XLA memory estimate GiB", "train/{dtype}/xla_memory_bytes", ".3g", gib),
      (f"forward images/s (batch {train_b})", "forward/{dtype}/images_per_second", ".4g", 1),
      (f"sampling image-steps/s (batch {samp_b})",
       "sampling_step/{dtype}/image_steps_per_second", ".4g", 1),
      ("sampling step MFU vs spec peak", "sampling_step/{dtype}/mfu_vs_spec", ".3f", 1),
      ("sampling step MFU vs measured matmul", "sampling_step/{dtype}/mfu_vs_matmul", ".3f", 1),
      ("reference train images/s", "reference/train/{dtype}/images_per_second", ".4g", 1),
      ("ours / reference, train", "reference/ratios/train_{dtype}", ".2f", 1),
      ("reference forward images/s", "reference/forward/{dtype}/images_per_second", ".4g", 1),
      ("ours / reference, forward", "reference/ratios/forward_{dtype}", ".2f", 1),
      ("h: 100k train steps", "projections/{dtype}/train_hours", ".3g", 1),
      ("h: 4,000 samples, 4000-step chain", "projections/{dtype}/sample_full_chain_hours",
       ".3g", 1),
      ("h: 4,000 samples, 250 steps", "projections/{dtype}/sample_respaced_250_hours", ".3g", 1),
      (f"h: seed study ({len(STUDY_CONFIGS)} configs x {STUDY_SEEDS} seeds = {runs} runs), "
       "full chain", "projections/{dtype}/study_full_chain_hours", ".3g", 1),
      ("h: seed study, 250-step sampling", "projections/{dtype}/study_respaced_250_hours",
       ".3g", 1),
  ]

  def cell(path: str, dtype: str, fmt: str, scale: float) -> str:
    v: Any = r
    for k in path.format(dtype=dtype).split("/"):
      v = v.get(k) if isinstance(v, dict) else None
    return "-" if v is None else format(v * scale, fmt)

  peaks = [(r["train"].get(dt) or {}).get("spec_peak") for dt in DTYPES]
  head = (f"{d['device_kind']} ({d['platform']}); jax {d['jax']}, jaxlib {d['jaxlib']}, "
          f"flax {d['flax']}; XLA_FLAGS={d['xla_flags'] or '(none)'}; "
          f"bf16 {mm.get('n')}^3 matmul {mm.get('tflops_per_second', math.nan):.4g} TFLOP/s; "
          "spec peaks: " + (" / ".join(p for p in peaks if p) or "none listed for this device")
          + f"; {r['model'].get('num_params', 0) / 1e6:.3g} M params; mode {r['mode']}; "
          f"wall {r.get('wall_seconds', 0):.0f} s; config library: {r.get('config_library')}; "
          f"tensorflow imported: {r['tensorflow_imported']}.")
  if "torch" in ref:
    head += f" Reference: torch {ref['torch']} on {ref['device']}."
  elif "error" in ref:
    head += f" Reference not run: {ref['error']}."
  lines = [head, "", "| measurement | float32 | bfloat16 |", "|---|---|---|"]
  lines += ["| " + " | ".join([label] + [cell(path, dt, fmt, scale) for dt in DTYPES]) + " |"
            for label, path, fmt, scale in rows]
  return "\n".join(lines) + "\n"
