"""Checkpointer: async saves survive the context, keep-last-K, exact restore,
and unfinished (temporary) saves are invisible and cleaned up."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from mem_diffusion import checkpoint, metrics, parallel


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
