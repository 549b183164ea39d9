"""Checkpointer: async saves survive the context, keep-last-K, exact restore,
unfinished (temporary) saves are invisible and cleaned up, and a save the
disk refuses is one OutputError that costs no older checkpoint, also in the
middle of training, where a rerun with space resumes exactly."""

import contextlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mem_diffusion.run import checkpoint, metrics, parallel, train
from mem_diffusion import errors
import disk_helpers
import train_helpers as th


def _state(x):
  return {"w": jnp.full((4, 3), x, jnp.float32), "step": jnp.asarray(int(x), jnp.int32),
          "empty": {}}


def test_save_restore_keep_and_tmp_cleanup(tmp_path):
  mesh = parallel.data_mesh()
  rep = parallel.replicated(mesh)
  with checkpoint.Checkpointer(str(tmp_path), keep=2) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, jax.device_put(_state(step), rep), {"step": step, "last_loss": 0.5})
  # Exiting the context waited for the async saves.
  os.makedirs(tmp_path / "4.orbax-checkpoint-tmp-123")
  with checkpoint.Checkpointer(str(tmp_path), keep=2) as ckpt:
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    abstract = checkpoint.abstract_like(jax.eval_shape(lambda: _state(0)), rep)
    state, meta = ckpt.restore(3, abstract)
  assert not os.path.exists(tmp_path / "4.orbax-checkpoint-tmp-123")
  assert meta == {"step": 3, "last_loss": 0.5}
  assert state["w"].sharding == rep
  np.testing.assert_array_equal(np.asarray(state["w"]), np.full((4, 3), 3.0))
  assert metrics.tree_sha256(jax.device_get(state)) == metrics.tree_sha256(
      jax.device_get(_state(3)))


def test_tree_sha256_sees_values_dtypes_and_names():
  a = {"x": np.zeros(3, np.float32)}
  assert metrics.tree_sha256(a) == metrics.tree_sha256({"x": np.zeros(3, np.float32)})
  assert metrics.tree_sha256(a) != metrics.tree_sha256({"x": np.zeros(3, np.float64)})
  assert metrics.tree_sha256(a) != metrics.tree_sha256({"y": np.zeros(3, np.float32)})
  b = {"x": np.array([0, 0, np.float32(1e-45)], np.float32)}
  assert metrics.tree_sha256(a) != metrics.tree_sha256(b)


# ----------------------------------------------------------------------------
# A save that cannot be written (disk full, read-only): one OutputError line,
# the older checkpoints intact, the failed save's temporary folder removed by
# the next Checkpointer, and saving works again once there is space.

def _random_state(step):
  """1 MiB of incompressible values (orbax compresses array chunks)."""
  return {"w": jax.random.normal(jax.random.key(step), (256, 1024), jnp.float32)}


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_failed_save_is_one_output_error_and_keeps_the_last_good_one(disk, tmp_path,
                                                                      monkeypatch):
  mesh = parallel.data_mesh()
  rep = parallel.replicated(mesh)
  directory = str(tmp_path / "ckpt")
  with contextlib.ExitStack() as stack:
    if disk == "tmpfs":  # room for 3 checkpoints of ~1 MiB, not 4
      stack.enter_context(disk_helpers.small_disk(directory, "3700k"))
    else:
      disk_helpers.fail_checkpoint_commit(4, monkeypatch)
    with pytest.raises(errors.OutputError) as err:
      with checkpoint.Checkpointer(directory, keep=10) as ckpt:
        for step in range(1, 7):
          ckpt.save(step, jax.device_put(_random_state(step), rep), {"step": step})
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 1
    assert message.startswith(f"cannot write checkpoint 4 in {directory}: No space left "
                              "on device (")
    assert "free on its filesystem" in message
    assert "a rerun resumes from step 3, the last good checkpoint" in message
    assert {n for n in os.listdir(directory) if n.isdigit()} == {"1", "2", "3"}

    monkeypatch.undo()  # space again
    if disk == "tmpfs":
      shutil.rmtree(os.path.join(directory, "1"))
    abstract = checkpoint.abstract_like(jax.eval_shape(lambda: _random_state(0)), rep)
    with checkpoint.Checkpointer(directory, keep=10) as ckpt:
      step, state, meta = ckpt.restore_latest(abstract)
      assert step == 3 and meta["step"] == 3
      assert metrics.tree_sha256(jax.device_get(state)) == metrics.tree_sha256(
          jax.device_get(_random_state(3)))
      ckpt.save(4, jax.device_put(_random_state(4), rep), {"step": 4})
    assert sorted(os.listdir(directory)) == (["2", "3", "4"] if disk == "tmpfs"
                                             else ["1", "2", "3", "4"])


def test_read_only_filesystem_is_one_output_error(tmp_path):
  mesh = parallel.data_mesh()
  rep = parallel.replicated(mesh)
  directory = str(tmp_path / "ckpt")
  with disk_helpers.small_disk(directory, "4m"):
    with pytest.raises(errors.OutputError) as err:
      with checkpoint.Checkpointer(directory, keep=10) as ckpt:
        ckpt.save(1, jax.device_put(_random_state(1), rep), {"step": 1})
        ckpt.wait()
        disk_helpers.remount(directory, "ro")
        ckpt.save(2, jax.device_put(_random_state(2), rep), {"step": 2})
        ckpt.wait()
    disk_helpers.remount(directory, "rw")
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(f"cannot write checkpoint 2 in {directory}: Read-only file "
                              "system ("), message
    assert "write somewhere else (a rerun resumes from step 1" in message
    assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ["1"]


# ----------------------------------------------------------------------------
# A checkpoint save that fails mid-training; a rerun with space resumes
# exactly: same parameters as an uninterrupted run.

FINAL, PARTIAL = 16, 8  # steps; checkpoints every 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return th.train_micro(tmp_path_factory, "ref", FINAL)[1]


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
  """A run stopped after PARTIAL steps (checkpoints 4 and 8)."""
  return th.train_micro(tmp_path_factory, "partial", PARTIAL)[0]


@pytest.mark.slow
@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_full_disk_during_training_stops_then_resumes_exactly(disk, reference, partial,
                                                              tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  shutil.copytree(partial, workdir, ignore=shutil.ignore_patterns("checkpoints"))
  with contextlib.ExitStack() as stack:
    if disk == "tmpfs":  # a checkpoint is ~3.3 MB; 4 fit, and the filler leaves 256 KiB
      stack.enter_context(disk_helpers.small_disk(ckpt_dir, "24m"))
    shutil.copytree(os.path.join(partial, "checkpoints"), ckpt_dir, dirs_exist_ok=True)
    if disk == "tmpfs":
      filler = disk_helpers.fill(ckpt_dir, leave=256 << 10)
    else:
      disk_helpers.fail_checkpoint_commit(12, monkeypatch)

    with pytest.raises(errors.OutputError) as err:
      train.train_and_evaluate(th.micro_config(training__num_steps=FINAL), workdir)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 1, message
    assert message.startswith(f"cannot write checkpoint 12 in {ckpt_dir}: No space left on "
                              "device ("), message
    assert message.endswith("(a rerun resumes from step 8, the last good checkpoint)"), message
    assert sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) == [4, 8]
    with open(os.path.join(workdir, "train_summary.json")) as f:
      assert json.load(f)["step"] == PARTIAL  # the copied one, not overwritten

    if disk == "tmpfs":
      os.remove(filler)
    monkeypatch.undo()
    resumed = train.train_and_evaluate(th.micro_config(training__num_steps=FINAL), workdir)
    assert resumed["resumed_from_step"] == PARTIAL and resumed["step"] == FINAL
    assert resumed["params_sha256"] == reference["params_sha256"]
    assert resumed["ema_sha256"] == reference["ema_sha256"]
    assert not [n for n in os.listdir(ckpt_dir) if "tmp" in n]
