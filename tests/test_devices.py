"""The device count is settled before compute: training's batch must split
over the devices (checked before the first step), sampling pads its chunks
exactly, and the shipped configs fit 1 to 32 (IDDPM configs: 64) devices."""

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mem_diffusion import config as config_lib
from mem_diffusion.run import parallel, sampling, state
import train_helpers as th

TOY = ("quickstart", "toy_capacity", "toy_dummies", "toy_minority_majority")


def _configs():
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(th.REPO, "configs", "*.py")))
  return [n for n in names if not n.startswith("_")]


def _load(name: str, arg: str = ""):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  return module.get_config(arg)


@pytest.mark.parametrize("name", _configs())
def test_shipped_configs_fit_the_device_counts(name):
  config = _load(name)
  counts = (1, 2, 4, 8, 16) if name in TOY else (1, 2, 4, 8, 16, 32, 64)
  for n in counts:
    config_lib.check_devices(config, n)
  if name in TOY:  # batch 16: a 32-device host is told what to change, before training
    with pytest.raises(config_lib.ConfigError, match=r"batch_size=16 .*\(32\).* e\.g\. 32"):
      config_lib.check_devices(config, 32)


def _micro_sampling_config(batch: int):
  config = th.micro_config()
  config.sampling.batch_size = batch
  config.sampling.respacing = "4"
  return config


def _same(a: np.ndarray, b: np.ndarray) -> None:
  diff = np.abs(a.astype(int) - b.astype(int))
  # The same random numbers; only float reassociation may flip a level.
  assert a.shape == b.shape and diff.max() <= 1 and np.mean(diff == 0) > 0.999


@pytest.mark.slow
def test_padded_chunks_keep_every_sample():
  """6 rows on 4 devices pad to 8 and drop 2: the same 6 images as on 2
  devices (no padding) and on 1."""
  config = _micro_sampling_config(6)
  mesh = parallel.data_mesh()
  assert mesh.devices.size == 4
  params = state.initial_state(config, mesh).ema_params
  key = jax.random.PRNGKey(5)
  out = {}
  for n in (4, 2, 1):
    sub = parallel.data_mesh(jax.devices()[:n])
    p = jax.device_put(parallel.fetch(params), parallel.replicated(sub))
    out[n] = sampling.make_chunk_sampler(config, sub)(p, key)
  assert out[4].shape == (6, 8, 8, 3)
  _same(out[4], out[2])
  _same(out[4], out[1])


EIGHT = """
import jax, numpy as np
from mem_diffusion import config as config_lib
from mem_diffusion.run import parallel, sampling, state
import test_devices as td
assert jax.device_count() == 8, jax.devices()
for name in td._configs():
  config = td._load(name)
  config_lib.validate_config(config)
  for n in range(1, 33):
    if (n & (n - 1)) == 0 and not (name in td.TOY and n == 32):
      config_lib.check_devices(config, n)
config = td._micro_sampling_config(12)  # pads to 16 on 8 devices
mesh = parallel.data_mesh()
params = state.initial_state(config, mesh).ema_params
key = jax.random.PRNGKey(7)
eight = sampling.make_chunk_sampler(config, mesh)(params, key)
four_mesh = parallel.data_mesh(jax.devices()[:4])
four = sampling.make_chunk_sampler(config, four_mesh)(
    jax.device_put(parallel.fetch(params), parallel.replicated(four_mesh)), key)
td._same(eight, four)
print("eight devices ok")
"""


@pytest.mark.slow
def test_eight_devices(tmp_path):
  """With 8 simulated CPU devices: the shipped configs validate for 1..32
  devices, a sampling batch of 12 pads exactly, and a training batch of 12
  is refused in one line before anything trains."""
  env = th.subprocess_env(8)
  env["PYTHONPATH"] = os.pathsep.join([th.REPO, os.path.join(th.REPO, "tests"),
                                       env.get("PYTHONPATH", "")])
  done = subprocess.run([sys.executable, "-c", EIGHT], cwd=th.REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0 and "eight devices ok" in done.stdout, done.stderr[-3000:]

  workdir = tmp_path / "run"
  args = th.override_flags(training__batch_size=12) + [f"--workdir={workdir}", "--mode=all"]
  refused = subprocess.run([sys.executable, os.path.join(th.REPO, "main.py"), *args],
                           cwd=th.REPO, env=env, capture_output=True, text=True, timeout=300)
  errors = [l for l in refused.stderr.splitlines() if l.startswith("error:")]
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert errors == ["error: training.batch_size=12 must be divisible by the number of devices "
                    "(8) x training.micro_batches = 8, e.g. 8"], refused.stderr
  assert "Traceback" not in refused.stderr
  assert not os.path.exists(workdir / "checkpoints") and not os.path.exists(workdir / "config.json")
