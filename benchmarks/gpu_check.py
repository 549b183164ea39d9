"""One-GPU check: the numbers that size the full-scale study, in one run.

  bash benchmarks/gpu_check.sh --out_dir=gpu_check_out [--reference_dir=DIR]
  python benchmarks/gpu_check.py --smoke --out_dir=/tmp/gc   # CPU, tiny model

On the first device it times the real jitted train step of the IDDPM CIFAR
recipe (`train.build`, UNet-128, class-conditional with 10 classes, global
batch 128) in float32 and with bfloat16 compute, the forward pass at batch
128, one ancestral sampling step at a sampling batch, and a bfloat16 matmul.
MFU is reported against two named peaks (gpu_check_report.py): the vendor's
dense spec peak for the device and dtype, and that matmul's measured rate
(on a CPU without native bf16 the matmul is emulated, so the smoke run's
MFU against it can exceed 1 and means nothing there). With
`--reference_dir` naming an improved-diffusion checkout (a folder holding the
`improved_diffusion` package) and PyTorch importable, it times the PyTorch
reference built with the same settings on the same device, in a child process
(benchmarks/torch_reference.py). From the rates it projects
the wall time of 100k training steps, of 4,000 samples (full 4000-step chain
and 250 respaced steps) and of the README's seed study (7 configs x 3 seeds).
Every timing is the best of several repeats after a warm-up.
`<out_dir>/gpu_check.json` and `gpu_check.md` are rewritten after every
phase, so a run cut short keeps what it measured. It is meant to finish
within 8 minutes on one H100/H200-class GPU (compiles included).

Batches are synthetic (float32 images in [-1, 1], NHWC, int32 labels, as the
input pipeline delivers them), so neither TensorFlow nor the data modules are
imported; the JSON records that (`tensorflow_imported`).

It runs on a bare accelerator image with JAX, flax, optax and orbax-checkpoint
(with the absl-py, chex, numpy and PyYAML they bring) and nothing carried but
the repository: where ml-collections is missing, a stand-in takes its place
for this process (config_stand_in.py; the JSON says which, `config_library`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

# Before JAX starts: the PyTorch reference (a child process) shares the
# device, so JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import app  # pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

# The repository and benchmarks/, however the script was started.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

import config_stand_in  # pylint: disable=g-import-not-at-top,g-bad-import-order
CONFIG_LIBRARY = config_stand_in.install()  # before any module that imports ml_collections

from configs import default  # pylint: disable=g-import-not-at-top,g-bad-import-order
from mem_diffusion.run import parallel  # pylint: disable=g-import-not-at-top
from mem_diffusion import config as config_lib  # pylint: disable=g-import-not-at-top
from mem_diffusion.diffusion import samplers  # pylint: disable=g-import-not-at-top
from mem_diffusion.models import flops as flops_lib  # pylint: disable=g-import-not-at-top
import gpu_check_report as report  # pylint: disable=g-import-not-at-top
from timing import best_seconds  # pylint: disable=g-import-not-at-top

flags.DEFINE_string("out_dir", "gpu_check_out", "Where gpu_check.json and gpu_check.md go.")
flags.DEFINE_string("reference_dir", "", "An improved-diffusion checkout (folder holding "
                    "the improved_diffusion package); '' skips the PyTorch reference.")
flags.DEFINE_bool("smoke", False, "Tiny model, batch and matmul: checks the code path on CPU.")
flags.DEFINE_integer("sample_batch", 1000, "Images per sampling step (full mode).")
FLAGS = flags.FLAGS

DTYPES = report.DTYPES
# Top-level modules of requirements.txt: which of them the check pulled in.
REQUIREMENT_MODULES = ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "ml_collections",
                       "yaml", "absl", "numpy", "tensorflow", "tensorflow_datasets", "clu",
                       "tensorboard", "PIL", "matplotlib", "importlib_resources", "torch")


def check_config(smoke: bool):
  """IDDPM CIFAR-10 recipe, class-conditional over the 10 CIFAR classes."""
  config = default.get_config()
  config.name = "gpu_check"
  config.data.dataset = "cifar_classes"
  config.data.classes = tuple(range(10))
  config.data.class_counts = (5000,) * 10
  config.model.num_classes = 10  # = labels of that train set (validate checks it)
  config.training.batch_size = 128
  if smoke:  # a two-level 32-channel UNet keeps every layer kind, compiles fast
    config.model.model_channels = 32
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (16,)
    config.model.num_heads = 2
    config.training.batch_size = 4
  if CONFIG_LIBRARY == "ml_collections":  # the stand-in checks nothing; the CPU test does
    config_lib.validate_config(config, data_checks=False)
  return config


def train_api(config, mesh):
  """(model, diffusion, jitted train step, () -> step-0 state).

  The only use of mem_diffusion.run.train, so that the train module's API can move
  without touching the rest of this script.
  """
  from mem_diffusion.run import state as state_lib  # pylint: disable=g-import-not-at-top
  from mem_diffusion.run import train  # pylint: disable=g-import-not-at-top
  model, diffusion, _, _, _, train_step = train.build(config, mesh)
  return model, diffusion, train_step, lambda: state_lib.initial_state(config, mesh)


def compile_timed(jitted, *args) -> tuple[Any, float]:
  # --smoke only checks the code path: LLVM's optimisation of XLA:CPU code
  # would take most of its minute.
  options = {"xla_backend_optimization_level": 0} if FLAGS.smoke else None
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options=options)
  return compiled, time.perf_counter() - t0


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def xla_memory_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries - aliased (donated) buffers of one executable."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not implemented on some backends
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def device_peak_bytes(device) -> int | None:
  """The process's high-water mark on the device (None where unreported, e.g. CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def matmul_tflops(n: int, device, repeats: int) -> float:
  """Rate of an n^3 bfloat16 matmul (float32 accumulation): the attainable peak."""
  a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16), device)
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  s = best_seconds(lambda: f(a), jax.block_until_ready, iters=3, repeats=repeats)
  return 2.0 * n ** 3 / s / 1e12


def measure_train(config, mesh, state, batch, peaks, repeats, iters):
  """Compiles and times one dtype's train step; returns (row, state after the runs)."""
  model, diffusion, step_fn, _ = train_api(config, mesh)
  compiled, compile_s = compile_timed(step_fn, state, batch)
  holder = {"state": state}

  def run():  # the state is donated: thread it through
    holder["state"], stats = compiled(holder["state"], batch)
    return stats
  seconds = best_seconds(run, jax.block_until_ready, iters=iters, repeats=repeats)
  stats = jax.device_get(run())
  flops = xla_flops(compiled)
  b = config.training.batch_size
  # The usual MFU numerator: 3 x the analytic forward count (forward +
  # backward), independent of how XLA counts fused or library convolutions.
  model_flops = 3 * flops_lib.forward_flops(model, config.data.image_size, b)
  row = {"batch_size": b, "compile_seconds": compile_s, "seconds_per_step": seconds,
         "images_per_second": b / seconds, "xla_flops_per_step": flops,
         "model_flops_per_step": model_flops,
         **report.mfu_fields(flops, model_flops, seconds, *peaks),
         "xla_memory_bytes": xla_memory_bytes(compiled),
         "device_peak_bytes_so_far": device_peak_bytes(mesh.devices.flat[0]),
         "loss": float(stats["loss_sum"] / stats["count"])}
  return row, holder["state"], model, diffusion


def measure_inference(model, diffusion, params, batch_size, image_size, device, peaks,
                      repeats, iters, *, sampling_step: bool):
  """The network's forward pass, or one full ancestral step, on `batch_size` images."""
  rng = np.random.default_rng(1)
  shape = (batch_size, image_size, image_size, 3)
  x = jax.device_put(rng.standard_normal(shape).astype(np.float32), device)
  t = jax.device_put(rng.integers(0, diffusion.num_timesteps, batch_size).astype(np.int32),
                     device)
  y = jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32), device)

  def model_fn(p, x_, t_model, y_):
    return model.apply({"params": p}, x_, t_model, y_, train=False)

  if sampling_step:
    fn = jax.jit(lambda p, x_, t_, y_, k: samplers.p_sample_step(
        diffusion, lambda xx, tm: model_fn(p, xx, tm, y_), x_, t_, k))
    args = (params, x, t, y, jax.random.PRNGKey(2))
  else:
    fn = jax.jit(lambda p, x_, t_, y_: model_fn(p, x_, diffusion.model_timesteps(t_), y_))
    args = (params, x, t, y)
  compiled, compile_s = compile_timed(fn, *args)
  seconds = best_seconds(lambda: compiled(*args), jax.block_until_ready, iters=iters,
                         repeats=repeats)
  flops = xla_flops(compiled)
  model_flops = flops_lib.forward_flops(model, image_size, batch_size)
  key = "image_steps_per_second" if sampling_step else "images_per_second"
  return {"batch_size": batch_size, "compile_seconds": compile_s, "seconds": seconds,
          key: batch_size / seconds, "xla_flops": flops, "model_flops": model_flops,
          **report.mfu_fields(flops, model_flops, seconds, *peaks),
          "xla_memory_bytes": xla_memory_bytes(compiled)}


def modules_report() -> dict:
  # A None entry is a module made unimportable, not one imported.
  loaded = {m for m in REQUIREMENT_MODULES if sys.modules.get(m) is not None}
  if CONFIG_LIBRARY != "ml_collections":  # the stand-in holds that name, not the library
    loaded.discard("ml_collections")
  return {"tensorflow_imported": "tensorflow" in loaded, "config_library": CONFIG_LIBRARY,
          "requirement_modules_imported": sorted(loaded)}


def run_reference(reference_dir: str, config, batch_size: int, repeats: int,
                  iters: int) -> dict:
  """The PyTorch reference's rates from benchmarks/torch_reference.py, in a child process."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
  settings = json.dumps({"config": config.to_dict(), "batch_size": batch_size,
                         "repeats": repeats, "iters": iters})
  proc = subprocess.run([sys.executable, script, reference_dir, settings],
                        capture_output=True, text=True, check=False)
  if proc.returncode:  # keep the JAX numbers; say why the reference is missing
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"torch_reference.py exited {proc.returncode}: {tail}"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  start = time.perf_counter()
  smoke = FLAGS.smoke
  if FLAGS.reference_dir and not os.path.isdir(
      os.path.join(FLAGS.reference_dir, "improved_diffusion")):
    raise app.UsageError(f"--reference_dir={FLAGS.reference_dir} holds no improved_diffusion "
                         "package: name the checkout's root folder")
  config = check_config(smoke)
  device = jax.devices()[0]
  mesh = parallel.data_mesh([device])
  repeats, iters = (2, 1) if smoke else (5, 10)
  sample_batch = 8 if smoke else FLAGS.sample_batch
  fwd_batch = config.training.batch_size
  os.makedirs(FLAGS.out_dir, exist_ok=True)

  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  result: dict[str, Any] = {
      "mode": "smoke" if smoke else "full",
      "device": {"platform": device.platform, "device_kind": device.device_kind,
                 "num_local_devices": jax.local_device_count(),
                 "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                 "flax": flax.__version__, "python": sys.version.split()[0],
                 "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision)},
      "model": {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in config.model.to_dict().items() if k != "compute_dtype"},
      "train": {}, "forward": {}, "sampling_step": {}, "reference": None,
  }

  def write():
    result["wall_seconds"] = time.perf_counter() - start
    result.update(modules_report())
    result["projections"] = report.projections(
        result, config.training.num_steps, config.diffusion.steps, config.sampling.num_samples)
    with open(os.path.join(FLAGS.out_dir, "gpu_check.json"), "w") as f:
      json.dump(result, f, indent=1)
    with open(os.path.join(FLAGS.out_dir, "gpu_check.md"), "w") as f:
      f.write(report.markdown(result))

  n = 256 if smoke else 8192
  result["matmul"] = {"n": n, "dtype": "bfloat16",
                      "tflops_per_second": matmul_tflops(n, device, repeats)}
  peak = result["matmul"]["tflops_per_second"]
  print(f"[gpu_check] {device.device_kind}: bf16 {n}^3 matmul {peak:.3g} TFLOP/s", flush=True)
  write()

  rng = np.random.default_rng(0)
  b, size = config.training.batch_size, config.data.image_size
  batch = parallel.to_global({
      "image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, 10, b).astype(np.int32)}, mesh)
  state = train_api(config, mesh)[3]()
  result["model"]["num_params"] = int(sum(np.size(p) for p in jax.tree.leaves(state.params)))
  # bfloat16 first: the device's peak is a process high-water mark, and the
  # float32 step needs more, so each row's peak is its own.
  for dtype in DTYPES[::-1]:
    cfg = config.copy_and_resolve_references()
    cfg.model.compute_dtype = dtype
    peaks = (peak, report.spec_peak(device.device_kind, dtype,
                                    result["device"]["jax_default_matmul_precision"]))
    row, state, model, diffusion = measure_train(cfg, mesh, state, batch, peaks, repeats, iters)
    result["train"][dtype] = row
    vs_spec = "" if row["mfu_vs_spec"] is None else f"{row['mfu_vs_spec']:.3f} vs spec peak, "
    print(f"[gpu_check] train {dtype}: {row['images_per_second']:.4g} images/s, MFU {vs_spec}"
          f"{row['mfu_vs_matmul']:.3f} vs measured matmul, compile "
          f"{row['compile_seconds']:.1f} s", flush=True)
    write()
    for name, bs, is_step in (("forward", fwd_batch, False),
                              ("sampling_step", sample_batch, True)):
      r = measure_inference(model, diffusion, state.ema_params, bs, size, device, peaks,
                            repeats, max(iters // 3, 1), sampling_step=is_step)
      result[name][dtype] = r
      print(f"[gpu_check] {name} {dtype} batch {bs}: {r['seconds'] * 1e3:.4g} ms", flush=True)
      write()
  del state, batch

  if FLAGS.reference_dir:
    result["reference"] = run_reference(FLAGS.reference_dir, config, fwd_batch, repeats, iters)
    ref = result["reference"]
    if "error" not in ref:
      ref["ratios"] = {
          f"{kind}_{dtype}": result[kind][dtype]["images_per_second"]
          / ref[kind][dtype]["images_per_second"]
          for kind in ("train", "forward") for dtype in DTYPES}
    print(f"[gpu_check] reference: {json.dumps(ref.get('ratios', ref))}", flush=True)
  write()
  print(f"[gpu_check] done in {result['wall_seconds']:.0f} s: "
        f"{os.path.join(FLAGS.out_dir, 'gpu_check.md')}", flush=True)


if __name__ == "__main__":
  app.run(main)
