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
    (["--config=configs/capacity.py:big"], "error: configs/capacity.py: get_config('big') failed "
     "(ValueError: configs/capacity.py: unknown config argument 'big'"),
    (["--config=configs/missing.py"], "error: config file 'configs/missing.py' not found"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, flags, message):
  r = _main(flags + [f"--workdir={tmp_path / 'w'}"])
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(message), r.stderr
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow  # a subprocess or a whole run: kept out of the fast suite's 5 minutes
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


@pytest.mark.parametrize("spec,expected", [
    ("configs/hybrid_2k.py", "runs/hybrid_2k"),
    ("configs/hybrid_2k.py:tiny", "runs/hybrid_2k_tiny"),
    ("configs/capacity.py:1000,tiny", "runs/capacity_1000_tiny"),
    ("configs/toy_dummies.py:kind=gm,m=64", "runs/toy_dummies_kind-gm_m-64"),
])
def test_default_workdir_names_each_config_variant(spec, expected):
  from mem_diffusion.run import cli  # pylint: disable=g-import-not-at-top
  assert cli.default_workdir(spec) == expected


def test_default_workdir_is_announced_and_used(tmp_path):
  """The card's command with no --workdir: runs/<config name> under the current directory."""
  env = th.subprocess_env(1)
  r = subprocess.run([sys.executable, os.path.join(th.REPO, "main.py"),
                      "--config=" + os.path.join(th.REPO, "configs/quickstart.py:tiny"),
                      "--mode=eval"], cwd=str(tmp_path), env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  assert "in runs/quickstart_tiny" in r.stdout
  assert "runs/quickstart_tiny/samples" in r.stderr  # eval looked there: nothing sampled yet
  assert (tmp_path / "runs" / "quickstart_tiny").is_dir()
