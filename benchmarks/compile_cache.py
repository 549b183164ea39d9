"""What the persistent compilation cache saves when a UNet-128 run restarts.

Every resume, sample and eval process compiles the UNet-128 programs again
(40-120 s on a CPU). This times `main.py --mode=sample` from start to its
finished first chunk three ways, each a fresh process and a fresh workdir:

  cold:  an empty cache directory (compiles and fills it);
  warm:  the same directory again (loads instead of compiling);
  off:   --compile_cache=none.

Then the same for `--mode=train` of one UNet-128 step (batch 4, 32x32
Mondrians): the train step is the program a resume recompiles.

The model is the CIFAR UNet-128 at initialisation, written as a params file
(no training needed: compile time does not depend on the weights), sampling
one image on a 2-step chain so that compiling dominates (8 images x 10
steps of the UNet-128 are ~1.3 TFLOP, longer than the compile on a CPU).

  PYTHONPATH=. python benchmarks/compile_cache.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.sampling.num_samples=1", "--config.sampling.batch_size=1",
             "--config.sampling.respacing=2", "--config.eval.every_steps=0"]


def write_params(path: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from mem_diffusion.port import convert  # pylint: disable=g-import-not-at-top
  from mem_diffusion.models.unet import unet_from_config  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  model = unet_from_config(config.model, config.data.image_size)
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.jit(lambda k: model.init(k, x, jnp.zeros((1,)), train=False))(
      jax.random.PRNGKey(0))["params"]
  convert.save_params(jax.device_get(params), path)


# One UNet-128 train step on 32x32 Mondrians (no download), batch 4: the
# program every resume recompiles.
TRAIN = ["--config.data.dataset=mondrian", "--config.training.batch_size=4",
         "--config.training.num_steps=1", "--config.training.checkpoint_every=1",
         "--config.training.sample_grid_every=0", "--config.eval.every_steps=0"]


def timed_main(tmp: str, name: str, mode: str, flags: list[str], cache_flag: str) -> float:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_NUM_CPU_DEVICES="1")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  start = time.perf_counter()
  subprocess.run([sys.executable, os.path.join(REPO, "main.py"), "--config=configs/default.py",
                  f"--workdir={os.path.join(tmp, name)}", f"--mode={mode}",
                  f"--compile_cache={cache_flag}"] + flags,
                 check=True, env=env, cwd=REPO, capture_output=True)
  return time.perf_counter() - start


def timed_sample(tmp: str, name: str, params: str, cache_flag: str) -> float:
  return timed_main(tmp, name, "sample", [f"--config.sampling.params_file={params}"] + OVERRIDES,
                    cache_flag)


def main() -> None:
  with tempfile.TemporaryDirectory() as tmp:
    params = os.path.join(tmp, "unet128.msgpack")
    write_params(params)
    cache = os.path.join(tmp, "cache")
    cold = timed_sample(tmp, "cold", params, cache)
    warm = timed_sample(tmp, "warm", params, cache)
    off = timed_sample(tmp, "off", params, "none")
    entries = sum(len(files) for _, _, files in os.walk(cache))
    print(json.dumps({"sample_cold_s": round(cold, 1), "sample_warm_s": round(warm, 1),
                      "sample_off_s": round(off, 1), "sample_warm_over_off": round(warm / off, 3),
                      "sample_cache_files": entries}), flush=True)
    tcache = os.path.join(tmp, "train_cache")
    cold = timed_main(tmp, "train_cold", "train", TRAIN, tcache)
    warm = timed_main(tmp, "train_warm", "train", TRAIN, tcache)
    off = timed_main(tmp, "train_off", "train", TRAIN, "none")
    print(json.dumps({"train_cold_s": round(cold, 1), "train_warm_s": round(warm, 1),
                      "train_off_s": round(off, 1), "train_warm_over_off": round(warm / off, 3)}),
          flush=True)


if __name__ == "__main__":
  main()
