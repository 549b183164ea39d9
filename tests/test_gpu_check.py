"""benchmarks/gpu_check.py --smoke: the accelerator check's code path, on CPU.

The GPU run happens rarely and on borrowed time, so everything it does except
the sizes is exercised here: one smoke run in a subprocess, as on a bare
accelerator image (ml_collections and tensorflow made unimportable), then
checks on the JSON and the table it writes. The PyTorch reference path runs
too when torch is importable and MEM_DIFFUSION_REFERENCE_DIR names an
improved-diffusion checkout (CI has neither).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "bfloat16")
# What the train step, forward and sampling step may import: the packages of a
# bare accelerator image with JAX, flax, optax and orbax (and what they bring:
# absl, chex, numpy, PyYAML); torch stays in the reference's child process.
ALLOWED_MODULES = {"jax", "jaxlib", "flax", "optax", "orbax", "chex", "absl", "numpy", "yaml"}
# A prelude that makes this Python an image without ml-collections and TensorFlow.
BARE_IMAGE = ("import os, runpy, sys\n"
              "sys.modules['ml_collections'] = sys.modules['tensorflow'] = None\n"
              f"sys.path[0] = {os.path.join(ROOT, 'benchmarks')!r}\n")
RUN_SCRIPT = "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
STUDY = ["cars_2k", "gm_1k", "gm_2k", "gm_4k", "hybrid_1k", "hybrid_2k", "hybrid_4k"]
REFERENCE_DIR = os.environ.get("MEM_DIFFUSION_REFERENCE_DIR", "")
RUN_REFERENCE = bool(REFERENCE_DIR) and importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("gpu_check"))
  cmd = [sys.executable, "-c", BARE_IMAGE + RUN_SCRIPT,
         os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--smoke", f"--out_dir={out_dir}"]
  if RUN_REFERENCE:
    cmd.append(f"--reference_dir={REFERENCE_DIR}")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, whatever the test session uses
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out_dir, "gpu_check.json")) as f:
    result = json.load(f)
  with open(os.path.join(out_dir, "gpu_check.md")) as f:
    table = f.read()
  return result, table, proc.stdout


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_environment_is_recorded(smoke):
  result, _, _ = smoke
  assert result["mode"] == "smoke"
  device = result["device"]
  for key in ("platform", "device_kind", "jax", "jaxlib", "flax", "python"):
    assert isinstance(device[key], str) and device[key], key
  assert device["platform"] == "cpu"
  # The child's environment had no XLA_FLAGS, and the check adds none.
  assert device["xla_flags"] == ""
  assert result["matmul"]["dtype"] == "bfloat16"
  assert _positive(result["matmul"]["tflops_per_second"])
  assert result["model"]["num_classes"] == 10
  assert _positive(result["model"]["num_params"])
  assert _positive(result["wall_seconds"])


@pytest.mark.slow
def test_runs_on_a_bare_image_without_ml_collections_or_tensorflow(smoke):
  result, table, _ = smoke
  assert result["tensorflow_imported"] is False
  assert result["config_library"].startswith("stand-in")
  assert "config library: stand-in" in table
  imported = set(result["requirement_modules_imported"])
  assert {"jax", "flax", "optax", "orbax"} <= imported
  assert imported <= ALLOWED_MODULES, imported - ALLOWED_MODULES


def test_the_stand_in_builds_the_config_the_library_validates(monkeypatch):
  """The bare-image run measures the recipe that ml_collections validates here."""
  monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
  import gpu_check  # pylint: disable=g-import-not-at-top
  assert gpu_check.CONFIG_LIBRARY == "ml_collections"
  real = gpu_check.check_config(smoke=False).to_dict()  # validated on the way
  dump = ("import json, gpu_check\n"
          "print(gpu_check.CONFIG_LIBRARY)\n"
          "print(json.dumps(gpu_check.check_config(smoke=False).to_dict()))\n")
  proc = subprocess.run(
      [sys.executable, "-c", BARE_IMAGE + dump], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  library, config = proc.stdout.strip().splitlines()[-2:]
  assert library.startswith("stand-in")
  assert json.loads(config) == json.loads(json.dumps(real))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step_rates(smoke, dtype):
  result, _, _ = smoke
  row = result["train"][dtype]
  assert row["batch_size"] == 4
  for key in ("compile_seconds", "seconds_per_step", "images_per_second",
              "xla_flops_per_step", "tflops_per_second", "xla_memory_bytes"):
    assert _positive(row[key]), (key, row[key])
  # No upper bound: the denominator is a timed bf16 matmul, which on a CPU
  # without native bf16 is emulated and slower than an fp32 conv step (CI
  # measured MFU 1.22 there). The exact relations below hold on any machine.
  assert row["mfu_vs_matmul"] > 0 and row["model_mfu_vs_matmul"] > 0
  assert row["model_mfu_vs_matmul"] / row["mfu_vs_matmul"] == pytest.approx(
      row["model_flops_per_step"] / row["xla_flops_per_step"])
  # A CPU has no spec peak: those fields are there, empty.
  assert row["spec_peak"] is None and row["mfu_vs_spec"] is None
  # XLA's count and 3 x the analytic forward count describe the same step.
  assert 0.8 < row["xla_flops_per_step"] / row["model_flops_per_step"] < 1.25
  assert row["images_per_second"] == pytest.approx(4 / row["seconds_per_step"])
  assert row["mfu_vs_matmul"] == pytest.approx(
      row["tflops_per_second"] / result["matmul"]["tflops_per_second"])
  assert math.isfinite(row["loss"]) and row["loss"] > 0
  assert row["device_peak_bytes_so_far"] is None  # CPU reports no memory stats


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_sampling_rates(smoke, dtype):
  result, _, _ = smoke
  fwd, samp = result["forward"][dtype], result["sampling_step"][dtype]
  assert fwd["batch_size"] == result["train"][dtype]["batch_size"]
  assert samp["batch_size"] == 8
  assert _positive(fwd["images_per_second"]) and _positive(samp["image_steps_per_second"])
  assert _positive(fwd["xla_flops"]) and _positive(samp["xla_flops"])
  # The sampling step is the network plus elementwise work on 2x the images.
  assert samp["xla_flops"] > fwd["xla_flops"]
  peak = result["matmul"]["tflops_per_second"]
  for row in (fwd, samp):  # no upper bound on CPU: see test_train_step_rates
    assert row["mfu_vs_matmul"] > 0 and row["model_mfu_vs_matmul"] > 0
    assert row["mfu_vs_matmul"] == pytest.approx(row["tflops_per_second"] / peak)
    assert row["model_mfu_vs_matmul"] / row["mfu_vs_matmul"] == pytest.approx(
        row["model_flops"] / row["xla_flops"])
  assert 0.8 < fwd["xla_flops"] / fwd["model_flops"] < 1.25


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_projections_follow_from_the_rates(smoke, dtype):
  result, _, _ = smoke
  p = result["projections"][dtype]
  train, samp = result["train"][dtype], result["sampling_step"][dtype]
  assert p["train_steps"] == 100_000 and p["samples"] == 4000 and p["study_runs"] == 21
  assert p["study_configs"] == STUDY
  assert p["train_hours"] == pytest.approx(100_000 * train["seconds_per_step"] / 3600)
  assert p["sample_full_chain_hours"] == pytest.approx(
      4000 * 4000 / samp["image_steps_per_second"] / 3600)
  assert p["sample_respaced_250_hours"] == pytest.approx(p["sample_full_chain_hours"] / 16)
  assert p["study_full_chain_hours"] == pytest.approx(
      21 * (p["train_hours"] + p["sample_full_chain_hours"]))
  assert p["study_respaced_250_hours"] == pytest.approx(
      21 * (p["train_hours"] + p["sample_respaced_250_hours"]))


@pytest.mark.slow
def test_markdown_table(smoke):
  result, table, stdout = smoke
  lines = table.splitlines()
  assert result["device"]["device_kind"] in lines[0]
  assert "| measurement | float32 | bfloat16 |" in lines
  rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
  train_row = rows["train images/s (batch 4)"]
  assert f"{result['train']['float32']['images_per_second']:.4g}" in train_row
  assert f"{result['train']['bfloat16']['images_per_second']:.4g}" in train_row
  measured = f"{result['matmul']['tflops_per_second']:.4g} TFLOP/s"
  assert f"MFU vs measured bf16 matmul, {measured} (XLA FLOPs)" in rows
  assert rows["MFU vs spec peak (XLA FLOPs)"].count("| - ") == 2  # none for a CPU
  assert "spec peaks: none listed for this device" in lines[0]
  assert "h: seed study (7 configs x 3 seeds = 21 runs), full chain" in rows
  assert "h: 100k train steps" in rows
  assert "gpu_check.md" in stdout


@pytest.mark.slow
@pytest.mark.skipif(not RUN_REFERENCE, reason="needs torch and MEM_DIFFUSION_REFERENCE_DIR "
                    "(an improved-diffusion checkout)")
def test_reference_is_the_same_model(smoke):
  result, table, _ = smoke
  ref = result["reference"]
  assert ref["num_params"] == result["model"]["num_params"]
  for kind in ("train", "forward"):
    for dtype in DTYPES:
      assert _positive(ref[kind][dtype]["images_per_second"])
      assert ref["ratios"][f"{kind}_{dtype}"] == pytest.approx(
          result[kind][dtype]["images_per_second"] / ref[kind][dtype]["images_per_second"])
  assert "Reference: torch" in table


def test_a_failing_reference_is_reported_not_raised(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
  import gpu_check  # pylint: disable=g-import-not-at-top
  (tmp_path / "improved_diffusion").mkdir()
  (tmp_path / "improved_diffusion" / "__init__.py").write_text("")  # no modules inside
  ref = gpu_check.run_reference(str(tmp_path), gpu_check.check_config(smoke=True),
                                batch_size=2, repeats=1, iters=1)
  assert set(ref) == {"error"}
  assert ref["error"].startswith("torch_reference.py exited 1: ")
  assert ("torch" in ref["error"]) or ("improved_diffusion" in ref["error"])


def _report():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    return importlib.import_module("gpu_check_report")
  finally:
    sys.path.pop(0)


def test_study_is_the_readme_sweep():
  """The projection's 7 x 3 runs are the README's study, each a 100k-step, 4,000-sample run."""
  report = _report()
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  section = readme[readme.index("## The full-scale experiments"):]
  command = re.search(r"python -m mem_diffusion.sweep --root=runs/study --seeds=(\S+) \\\n"
                      r"\s*--configs=(\S+)", section)
  assert command, "the README's study command moved"
  assert len(command.group(1).split(",")) == report.STUDY_SEEDS
  names = [c.removeprefix("configs/").removesuffix(".py") for c in command.group(2).split(",")]
  assert names == list(report.STUDY_CONFIGS) == STUDY
  for name in names:
    config = importlib.import_module(f"configs.{name}").get_config()
    assert (config.training.num_steps, config.training.batch_size, config.sampling.num_samples,
            config.diffusion.steps) == (100_000, 128, 4000, 4000), name


@pytest.mark.parametrize("kind,dtype,precision,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", "None", 989.4),
    ("NVIDIA H100 80GB HBM3", "float32", "None", 494.7),  # TF32 under the default precision
    ("NVIDIA H100 80GB HBM3", "float32", "highest", 66.9),
    ("NVIDIA H200", "bfloat16", "None", 989.4),
    ("NVIDIA H100 PCIe", "bfloat16", "None", 756.5),
    ("NVIDIA A100-SXM4-80GB", "float32", "None", 156.0),
    ("TPU v5 lite", "bfloat16", "None", 197.0),
    ("TPU v5 lite", "float32", "None", None),
    ("NVIDIA H100 NVL", "bfloat16", "None", None),
    ("cpu", "bfloat16", "None", None),
])
def test_spec_peaks(kind, dtype, precision, peak):
  spec = _report().spec_peak(kind, dtype, precision)
  assert (spec and spec[0]) == peak
  if peak:
    assert f"{peak:g} TFLOP/s" in spec[1] and "dense" in spec[1]


def test_mfu_names_both_peaks():
  """A step at 400 TFLOP/s on an H100 SXM whose bf16 matmul measured 800."""
  report = _report()
  spec = report.spec_peak("NVIDIA H100 80GB HBM3", "bfloat16", None)
  row = report.mfu_fields(400e12, 380e12, 1.0, 800.0, spec)
  assert row["mfu_vs_matmul"] == pytest.approx(0.5)
  assert row["mfu_vs_spec"] == pytest.approx(400 / 989.4)
  assert row["mfu_vs_matmul"] / row["mfu_vs_spec"] == pytest.approx(989.4 / 800)  # 1.24x
  assert row["spec_peak"] == "H100 SXM dense bfloat16 989.4 TFLOP/s"
  assert row["model_mfu_vs_spec"] == pytest.approx(380 / 989.4)
