"""Shared pieces of the training tests: the micro config and checkpoint reads.

The micro experiment is configs/mondrian_2k.py:tiny shrunk further (8x8
Mondrian images, a one-level 32-channel UNet, batch 8), so a step compiles in
seconds and runs in milliseconds; dropout is on so that the dropout keys are
part of what must agree across device counts and restarts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = "configs/mondrian_2k.py:tiny"

MICRO = {
    "data.image_size": 8,
    "data.num_original": 16,
    "model.channel_mult": (1,),
    "model.attention_resolutions": (),
    "model.dropout": 0.1,
    "training.batch_size": 8,
    "training.learning_rate": 1e-3,
    "training.num_steps": 24,
    "training.log_every": 4,
    "training.checkpoint_every": 4,
    "training.keep_checkpoints": 10,
}


def micro_config(**changes: Any) -> ml_collections.ConfigDict:
  """The micro config; `changes` use '__' for '.', e.g. training__num_steps."""
  from configs import mondrian_2k  # pylint: disable=g-import-not-at-top
  config = mondrian_2k.get_config("tiny")
  items = dict(MICRO)
  items.update({k.replace("__", "."): v for k, v in changes.items()})
  for key, value in items.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def override_flags(**changes: Any) -> list[str]:
  """The same config as command-line flags for main.py."""
  items = dict(MICRO)
  items.update({k.replace("__", "."): v for k, v in changes.items()})
  return [f"--config={CONFIG_FILE}"] + [
      f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
      for k, v in items.items()]


def subprocess_env(num_devices: int, cache_dir: str | None = None) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_NUM_CPU_DEVICES"] = str(num_devices)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  return env


def start_main(args: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
  log = open(log_path, "ab")
  return subprocess.Popen([sys.executable, os.path.join(REPO, "main.py")] + args,
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def read_checkpoint(workdir: str, step: int, config, mesh=None) -> Any:
  """Host numpy (params, ema_params) of one checkpoint of a run."""
  from mem_diffusion.run import checkpoint, parallel, state as state_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh or parallel.data_mesh()
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                               keep=100) as ckpt:
    state, _ = ckpt.restore(step, state_lib.abstract_state(config, mesh))
  return jax.tree.map(np.asarray, (state.params, state.ema_params))


def max_abs_diff(a: Any, b: Any) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def rel_l2(a: Any, b: Any, base: Any) -> float:
  """||a - b|| / ||b - base|| over all leaves (float64)."""
  num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  den = sum(float(np.sum((np.asarray(y, np.float64) - np.asarray(z, np.float64)) ** 2))
            for y, z in zip(jax.tree.leaves(b), jax.tree.leaves(base)))
  return float(np.sqrt(num / den))


def train_micro(tmp_path_factory, name: str, num_steps: int):
  """(workdir, train summary) of a fresh micro run of `num_steps` (checkpoints every 4)."""
  from mem_diffusion.run import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp(name))
  return workdir, train.train_and_evaluate(micro_config(training__num_steps=num_steps), workdir)
