"""Preemption and crashes of a real `main.py --mode=train` process.

SIGKILL at a random moment of a run, a restart that is stopped by SIGTERM
(which must save the step it was on and exit 143), and a final restart must
end with the parameters of an uninterrupted run, bit for bit. Subprocesses
share a persistent compilation cache so only the first one compiles.
"""

import json
import os
import random
import re
import signal
import time

import pytest

from mem_diffusion.run import checkpoint, train
import train_helpers as th

NUM_STEPS = 48
CHANGES = dict(training__num_steps=NUM_STEPS, training__log_every=1,
               training__checkpoint_every=4)
_LOG_STEP = re.compile(rb"train  step (\d+)/")


def _wait_for_training(proc, log_path, timeout=300.0, after_step=0):
  """Blocks until the run logged a step > after_step; returns that step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    with open(log_path, "rb") as f:
      steps = [int(m) for m in _LOG_STEP.findall(f.read())]
    if steps and steps[-1] > after_step:
      return steps[-1]
    if proc.poll() is not None:
      with open(log_path, "rb") as f:
        raise AssertionError(f"run exited early ({proc.returncode}):\n"
                             + f.read().decode(errors="replace")[-3000:])
    time.sleep(0.05)
  proc.kill()
  raise AssertionError("run did not start training in time")


@pytest.mark.slow
def test_sigkill_then_sigterm_then_resume_matches_uninterrupted(tmp_path):
  workdir = str(tmp_path / "run")
  logs = [str(tmp_path / f"main{i}.log") for i in range(3)]
  env = th.subprocess_env(4, cache_dir=str(tmp_path / "jax_cache"))
  args = th.override_flags(**CHANGES) + [f"--workdir={workdir}", "--mode=train"]

  # 1. SIGKILL at a random moment once training runs (maybe mid-save).
  proc = th.start_main(args, env, logs[0])
  _wait_for_training(proc, logs[0])
  time.sleep(random.Random().uniform(0.0, 1.0))
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(60) == -signal.SIGKILL

  # 2. Restart; SIGTERM after it has trained past its resume point.
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=100) as c:
    resumed_at = c.latest_step() or 0
  proc = th.start_main(args, env, logs[1])
  _wait_for_training(proc, logs[1], after_step=resumed_at)
  proc.send_signal(signal.SIGTERM)
  rc = proc.wait(120)
  with open(logs[1], "rb") as f:
    tail = f.read().decode(errors="replace")[-3000:]
  assert rc == 128 + signal.SIGTERM, tail
  assert "preempted: stopped by signal 15 at step" in tail
  saved = int(re.findall(r"stopped by signal 15 at step (\d+)", tail)[-1])
  assert resumed_at < saved < NUM_STEPS
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=100) as c:
    assert c.latest_step() == saved

  # 3. Resume to the end.
  proc = th.start_main(args, env, logs[2])
  assert proc.wait(300) == 0, open(logs[2], errors="replace").read()[-3000:]
  with open(os.path.join(workdir, "train_summary.json")) as f:
    summary = json.load(f)
  assert summary["step"] == NUM_STEPS and summary["resumed_from_step"] == saved

  # The uninterrupted run, in this process (same config, same XLA programs).
  reference = train.train_and_evaluate(th.micro_config(**CHANGES),
                                       str(tmp_path / "reference"))
  assert summary["params_sha256"] == reference["params_sha256"]
  assert summary["ema_sha256"] == reference["ema_sha256"]
