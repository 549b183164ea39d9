"""main.py's command line: errors are one `error:` line and exit 2, early."""

import os
import subprocess
import sys

import pytest

import train_helpers as th


def _main(args, env=None, timeout=120):
  return subprocess.run([sys.executable, os.path.join(th.REPO, "main.py")] + args,
                        cwd=th.REPO, env=env or th.subprocess_env(1),
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flags,message", [
    (["--config=configs/gm_2k.py:tiny", "--config.training.nope=1"],
     "error: unknown config key 'nope' in --config.training.nope"),
    (["--config=configs/gm_2k.py:tiny", "--config.training.batch_size=-4"],
     "error: training.batch_size=-4: expected an integer in 1..65536"),
    (["--config=configs/gm_2k.py:tiny", "--config.diffusion.loss=l1"],
     "error: diffusion.loss='l1': expected one of"),
    (["--config=configs/capacity.py:big"], "error: ValueError: configs/capacity.py: unknown config argument 'big'"),
    (["--config=configs/missing.py"], "error: cannot load the config file"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, flags, message):
  r = _main(flags + [f"--workdir={tmp_path / 'w'}"])
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(message), r.stderr
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w")


def test_missing_cifar_is_the_data_error_before_any_compute(tmp_path):
  env = th.subprocess_env(1)
  env["TFDS_DATA_DIR"] = str(tmp_path / "no_tfds")
  r = _main(["--config=configs/cars_2k.py:tiny", f"--workdir={tmp_path / 'w'}",
             "--config.data.download=false"], env)
  assert r.returncode == 2
  assert "error: CIFAR-10 is not prepared" in r.stderr and "Traceback" not in r.stderr
  assert "data.download=False forbids" in r.stderr
  assert not os.path.exists(tmp_path / "w" / "config.json")
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
