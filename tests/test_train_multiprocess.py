"""Two jax.distributed processes on localhost (2 CPU devices each) train the
same 4-device run as one process with 4 devices, up to float reassociation."""

import json
import os
import socket

import pytest

from mem_diffusion.run import train
import train_helpers as th


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  changes = dict(training__num_steps=8)
  workdir = str(tmp_path / "two")
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for pid in range(2):
    args = th.override_flags(**changes) + [
        f"--workdir={workdir}", "--mode=train", f"--coordinator_address={address}",
        "--num_processes=2", f"--process_id={pid}"]
    procs.append(th.start_main(args, th.subprocess_env(2), str(tmp_path / f"p{pid}.log")))
  codes = [p.wait(600) for p in procs]
  logs = [open(tmp_path / f"p{i}.log", errors="replace").read()[-3000:] for i in range(2)]
  assert codes == [0, 0], logs

  with open(os.path.join(workdir, "train_summary.json")) as f:
    summary = json.load(f)
  assert summary["num_processes"] == 2 and summary["num_devices"] == 4
  assert summary["step"] == 8

  config = th.micro_config(**changes)
  ref_dir = str(tmp_path / "one")
  train.train_and_evaluate(config, ref_dir)
  two, two_ema = th.read_checkpoint(workdir, 8, config)
  one, one_ema = th.read_checkpoint(ref_dir, 8, config)
  before = th.read_checkpoint(ref_dir, 4, config)[0]
  rel = th.rel_l2(two, one, before)
  assert rel < 0.02, rel
  assert th.max_abs_diff(two_ema, one_ema) < 1e-6
