"""Damaged checkpoints and concurrent runs, on the micro config.

A run whose newest checkpoint is broken must warn, move it aside and resume
from the newest intact one, ending with the uninterrupted run's parameters;
a workdir with only broken checkpoints must stop rather than start over. A
second run in a workdir that a live process holds must refuse at once.
SIGKILL/SIGTERM of a real run: tests/test_train_faults.py.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mem_diffusion.run import checkpoint, parallel, train, workdir_lock
import train_helpers as th

FINAL, PARTIAL = 16, 12  # steps; checkpoints every 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return th.train_micro(tmp_path_factory, "ref", FINAL)[1]


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
  """A run stopped after PARTIAL steps (checkpoints 4, 8, 12)."""
  return th.train_micro(tmp_path_factory, "partial", PARTIAL)[0]


def _copy(src, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst


def _flip_middle_byte(path):
  with open(path, "r+b") as f:
    data = f.read()
    f.seek(len(data) // 2)
    f.write(bytes([data[len(data) // 2] ^ 0x01]))


def _corrupt(step_dir, how):
  """Damages one checkpoint folder the way disks and copies do."""
  state = os.path.join(step_dir, "state")
  if how == "bit_flip_in_array_data":  # orbax restores this without error
    for path in glob.glob(os.path.join(state, "ocdbt.process_*", "d", "*")):
      _flip_middle_byte(path)
  elif how == "truncated_files":
    for path in glob.glob(os.path.join(state, "**", "*"), recursive=True):
      if os.path.isfile(path):
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  elif how == "garbage_metadata":
    with open(os.path.join(state, "_METADATA"), "wb") as f:
      f.write(os.urandom(200))
  elif how == "meta_item_missing":  # commit markers intact, meta data gone
    os.remove(os.path.join(step_dir, "meta", "metadata"))
  else:
    raise ValueError(how)


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n.isdigit())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["bit_flip_in_array_data", "truncated_files",
                                 "garbage_metadata", "meta_item_missing"])
def test_broken_newest_checkpoint_falls_back_and_matches(reference, partial, tmp_path,
                                                         how, caplog):
  workdir = _copy(partial, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert _steps(workdir) == [4, 8, 12]
  _corrupt(os.path.join(ckpt_dir, "12"), how)
  assert os.path.exists(os.path.join(ckpt_dir, "12", "commit_success.txt"))
  caplog.set_level("WARNING")
  summary = train.train_and_evaluate(th.micro_config(training__num_steps=FINAL), workdir)
  assert summary["resumed_from_step"] == 8  # not 0, not the broken 12
  assert summary["params_sha256"] == reference["params_sha256"]
  assert summary["ema_sha256"] == reference["ema_sha256"]
  assert "12.corrupt-1" in os.listdir(ckpt_dir)  # kept for inspection
  assert _steps(workdir) == [4, 8, 12, 16]  # step 12 redone
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert "checkpoint 12" in warnings and "moved aside" in warnings, warnings


@pytest.mark.slow
def test_every_checkpoint_broken_stops_instead_of_starting_over(partial, tmp_path):
  workdir = _copy(partial, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for step in (4, 8, 12):
    _corrupt(os.path.join(ckpt_dir, str(step)), "truncated_files")
  config = th.micro_config(training__num_steps=FINAL)
  with pytest.raises(checkpoint.CheckpointCorruptError,
                     match="none of the 3 checkpoints.*refusing to start over from step 0"):
    train.train_and_evaluate(config, workdir)
  # Nothing moved (the cause might be the machine, not the files), nothing trained.
  assert _steps(workdir) == [4, 8, 12]
  with open(os.path.join(workdir, "train_summary.json")) as f:
    assert json.load(f)["step"] == PARTIAL  # the old run's, not a new one's
  with pytest.raises(checkpoint.CheckpointCorruptError):  # and again on a rerun
    train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_only_moved_aside_checkpoints_left_stops(partial, tmp_path):
  workdir = _copy(partial, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for step in (4, 8, 12):
    os.rename(os.path.join(ckpt_dir, str(step)), os.path.join(ckpt_dir, f"{step}.corrupt-1"))
  with pytest.raises(checkpoint.CheckpointCorruptError, match="only checkpoints moved aside"):
    train.train_and_evaluate(th.micro_config(training__num_steps=FINAL), workdir)
  assert _steps(workdir) == []


def test_checksum_sees_one_flipped_bit_and_nothing_else():
  mesh = parallel.data_mesh()
  tree = jax.device_put({"w": jnp.linspace(-1, 1, 1000, dtype=jnp.float32),
                         "k": jnp.arange(7, dtype=jnp.uint32),
                         "h": jnp.ones((3, 5), jnp.bfloat16)}, parallel.replicated(mesh))
  base = checkpoint.state_checksum(tree)
  assert base == checkpoint.state_checksum(jax.tree.map(np.asarray, tree))
  one = parallel.data_mesh(jax.devices()[:1])
  assert base == checkpoint.state_checksum(jax.device_put(tree, parallel.replicated(one)))
  w = np.asarray(tree["w"]).copy()
  w.view(np.uint32)[517] ^= 1 << 3
  assert checkpoint.state_checksum(dict(tree, w=w)) != base
  swapped = np.asarray(tree["k"])[[1, 0, 2, 3, 4, 5, 6]]
  assert checkpoint.state_checksum(dict(tree, k=swapped)) != base
  assert checkpoint.state_checksum(dict(tree, h=np.ones((5, 3), np.float32))) != base


# ----------------------------------------------------------------------------
# One run per workdir.

_HOLDER = """
import sys, time
from mem_diffusion.run import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(600)
"""


def _start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], cwd=th.REPO,
                          env=th.subprocess_env(1), stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
  workdir = str(tmp_path / "w")
  proc = _start_holder(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirLocked,
                       match=f"in use by another run \\(pid {proc.pid} on"):
      with workdir_lock.hold(workdir):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
  # SIGKILL leaves the file but no lock: the next run goes ahead.
  assert os.path.exists(os.path.join(workdir, ".lock"))
  with workdir_lock.hold(workdir):
    with pytest.raises(workdir_lock.WorkdirLocked):  # also within one process
      with workdir_lock.hold(workdir):
        pass
  with workdir_lock.hold(workdir):  # released on exit
    pass


def test_second_main_in_a_held_workdir_exits_2_with_one_line(tmp_path):
  workdir = str(tmp_path / "w")
  with workdir_lock.hold(workdir):
    start = time.time()
    r = subprocess.run(
        [sys.executable, os.path.join(th.REPO, "main.py")]
        + th.override_flags() + [f"--workdir={workdir}", "--mode=train"],
        cwd=th.REPO, env=th.subprocess_env(1), capture_output=True, text=True,
        timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: workdir ") and \
      "is in use by another run" in lines[0], r.stderr[-3000:]
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert time.time() - start < 120


def _env_where_tensorflow_cannot_load(tmp_path) -> dict[str, str]:
  """A child env in which `import tensorflow` raises, with TF's own switches unset.

  The product, not the test, must keep TensorFlow quiet and out of the cheap
  checks: the child sees none of the TF_* variables this suite sets.
  """
  poison = tmp_path / "poison" / "tensorflow"
  poison.mkdir(parents=True)
  (poison / "__init__.py").write_text(
      "raise ImportError('tensorflow was imported before the cheap checks')\n")
  env = th.subprocess_env(1)
  for var in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
    env.pop(var, None)
  env["PYTHONPATH"] = str(poison.parent) + os.pathsep + env["PYTHONPATH"]
  return env


@pytest.mark.parametrize("case", ["locked_workdir", "bad_config"])
def test_cheap_checks_answer_before_tensorflow_is_imported(tmp_path, case):
  workdir = str(tmp_path / "w")
  args = th.override_flags() + [f"--workdir={workdir}", "--mode=train"]
  if case == "bad_config":
    args.append("--config.training.learning_rate=-1.0")
  with workdir_lock.hold(workdir, enabled=case == "locked_workdir"):
    r = subprocess.run([sys.executable, os.path.join(th.REPO, "main.py")] + args,
                       cwd=th.REPO, env=_env_where_tensorflow_cannot_load(tmp_path),
                       capture_output=True, text=True, timeout=300)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
  expected = "is in use by another run" if case == "locked_workdir" else "learning_rate"
  assert lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.parametrize("kind", ["directory", "symlink_to_dev_null", "fifo"])
def test_a_lock_path_that_is_not_a_file_is_one_line(tmp_path, kind):
  """`<workdir>/.lock` as a directory, a link to /dev/null or a FIFO: refused
  through the real CLI before anything runs, and left as it was."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  lock = workdir / ".lock"
  if kind == "directory":
    lock.mkdir()
  elif kind == "symlink_to_dev_null":
    lock.symlink_to("/dev/null")
  else:
    os.mkfifo(lock)
  r = subprocess.run([sys.executable, os.path.join(th.REPO, "main.py")] + th.override_flags()
                     + [f"--workdir={workdir}", "--mode=train"],
                     cwd=th.REPO, env=th.subprocess_env(1), capture_output=True, text=True,
                     timeout=300)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith("error: ") and ".lock is " in lines[0] and "remove it" in lines[0]
  assert not (workdir / "checkpoints").exists()
  assert os.path.islink(lock) if kind == "symlink_to_dev_null" else os.path.exists(lock)
