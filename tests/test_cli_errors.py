"""Every command line: a user's mistake is one `error:` line naming its cause
and exit 2, before anything is computed or written, whichever CLI it reaches.

Each case runs the real command in a subprocess: the CLI's own flag parsing,
config loading and exit code are the point.
"""

import os
import subprocess
import sys

import pytest

import train_helpers as th

MODULES = {"sweep": "mem_diffusion.sweep", "capacity": "mem_diffusion.capacity",
           "chains": "mem_diffusion.chains", "replicates": "mem_diffusion.replicates",
           "export": "mem_diffusion.data.export", "convert": "mem_diffusion.convert",
           "parity": "mem_diffusion.parity"}


def run_cli(cli, args, cwd=None, timeout=120):
  command = ([os.path.join(th.REPO, "main.py")] if cli == "main" else ["-m", MODULES[cli]])
  env = th.subprocess_env(1)
  env["MEM_DIFFUSION_HUGE_PAGES"] = "0"  # no restart: one process to time out
  return subprocess.run([sys.executable] + command + list(args), cwd=cwd or th.REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def assert_one_line(r, code, needle):
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == code, (r.returncode, r.stderr[-2000:])
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
  assert "Traceback" not in r.stderr and "FATAL" not in r.stderr


# --- config files that are not configs, through every CLI that loads one --------------

BAD_CONFIG_FILES = {
    "raises": ("raise RuntimeError('boom in config')\n",
               "failed to import (RuntimeError: boom in config)"),
    "returns_an_int": ("def get_config():\n  return 42\n", "returned int, not an ml_collections"),
    "no_get_config": ("x = 1\n", "defines no get_config() function"),
    "not_python": (None, "is not Python (expected a .py file)"),
    "dev_null": (None, "'/dev/null' is not a file"),
    "missing": (None, "not found"),
}


def _config_path(tmp_path, case):
  text, _ = BAD_CONFIG_FILES[case]
  if case == "not_python":
    return os.path.join(th.REPO, "README.md")
  if case == "dev_null":
    return "/dev/null"
  path = str(tmp_path / f"{case}.py")
  if text is not None:
    with open(path, "w") as f:
      f.write(text)
  return path


def _config_args(cli, config, root):
  if cli == "sweep":
    return [f"--configs={config}", f"--root={root}"]
  if cli == "capacity":
    return [f"--config={config}", f"--root={root}"]
  return [f"--config={config}", f"--workdir={root}"]


@pytest.mark.parametrize("cli", ["main", "sweep", "capacity", "chains"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIG_FILES))
def test_a_bad_config_file_is_one_line_in_every_cli(tmp_path, cli, case):
  r = run_cli(cli, _config_args(cli, _config_path(tmp_path, case), tmp_path / "out"))
  assert_one_line(r, 2, BAD_CONFIG_FILES[case][1])
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cli", ["main", "chains"])
def test_a_missing_config_with_an_override_is_one_line(tmp_path, cli):
  """ml_collections loads the file to apply `--config.X=`: an OSError traceback before."""
  r = run_cli(cli, ["--config", str(tmp_path / "missing.py"), "--config.training.num_steps=3",
                    f"--workdir={tmp_path / 'w'}"])
  assert_one_line(r, 2, "missing.py' not found")


def test_sweep_and_capacity_take_the_same_checks(tmp_path):
  for cli in ("sweep", "capacity"):
    r = run_cli(cli, _config_args(cli, _config_path(tmp_path, "no_get_config") + ":tiny",
                                  tmp_path / "out"))
    assert_one_line(r, 2, "defines no get_config() function")


# --- flags ------------------------------------------------------------------------------

FLAG_CASES = [
    ("main", ["--config=configs/quickstart.py:tiny", "--mode=bogus"], "flag --mode=bogus"),
    ("main", ["--config=configs/quickstart.py:tiny", "--nosuchflag"], "nosuchflag"),
    ("sweep", ["--preset=toy", "--root=R", "--jobs=0"], "flag --jobs=0: 0 is not a positive"),
    ("sweep", ["--preset=nope", "--root=R"], "flag --preset=nope"),
    ("sweep", ["--preset=toy", "--root=R", "--devices=-1"], "flag --devices=-1"),
    ("capacity", ["--config=configs/toy_capacity.py", "--root=R", "--lo=abc"], "flag --lo=abc"),
    ("capacity", ["--config=configs/toy_capacity.py", "--root=R", "--high=x"], "flag --high=x"),
    ("chains", ["--config=configs/quickstart.py:tiny", "--bogus"], "bogus"),
    ("replicates", ["--samples"], "argument --samples: expected one argument"),
    ("replicates", ["--samples=a", "--train=b", "--out=c", "--threshold=x"], "--threshold"),
    ("export", ["--count=x"], "count"),
    ("convert", [], "the following arguments are required: input, output"),
    ("parity", [], "no input files"),
    ("parity", ["--bogus"], "unknown option --bogus"),
]


@pytest.mark.parametrize("cli,args,needle", FLAG_CASES,
                         ids=[f"{c}{i}" for i, (c, *_) in enumerate(FLAG_CASES)])
def test_a_bad_flag_is_one_line_exit_2_in_every_cli(tmp_path, cli, args, needle):
  args = [a.replace("=R", f"={tmp_path / 'root'}") for a in args]
  r = run_cli(cli, args)
  assert_one_line(r, 2, needle)
  assert not (tmp_path / "root").exists()


def test_convert_names_its_input_and_exits_2(tmp_path):
  r = run_cli("convert", [str(tmp_path / "nope.npz"), str(tmp_path / "out.msgpack")])
  assert_one_line(r, 2, f"convert: {tmp_path / 'nope.npz'}: input file: not found")


# --- values that passed validation, then failed after training ---------------------------

LATE_VALUES = [
    ("sampling.respacing", "0", "sampling.respacing='0'"),
    ("eval.every_respacing", "0", "eval.every_respacing='0'"),
    ("training.grid_respacing", "0", "training.grid_respacing='0'"),
    ("sampling.num_samples", "1", "sampling.num_samples=1: expected an integer in 2.."),
    ("eval.dup_rms", "255", "eval.dup_rms=255.0: expected a finite number in [0, 16]"),
]


@pytest.mark.parametrize("key,value,needle", LATE_VALUES, ids=[c[0] for c in LATE_VALUES])
def test_values_that_failed_late_are_refused_at_validation(tmp_path, key, value, needle):
  extra = {"eval.every_respacing": ["--config.eval.every_steps=4"],
           "training.grid_respacing": ["--config.training.sample_grid_every=4"]}.get(key, [])
  r = run_cli("main", ["--config=configs/toy_capacity.py:8,tiny", f"--config.{key}={value}",
                       f"--workdir={tmp_path / 'w'}"] + extra)
  assert_one_line(r, 2, needle)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key,value", [
    ("eval.every_respacing", "0"), ("training.grid_respacing", "0,0"),  # chains never built
    ("sampling.respacing", "ddim0"), ("eval.dup_rms", 16.5), ("eval.dup_rms", float("nan"))])
def test_the_new_bounds_hold_in_process(key, value):
  from mem_diffusion import config as config_lib  # pylint: disable=g-import-not-at-top
  config = th.micro_config()
  section, _, name = key.rpartition(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=f"^{key}="):
    config_lib.validate_config(config)
  config[section][name] = 16.0 if key == "eval.dup_rms" else "5"
  config_lib.validate_config(config)


def test_chains_zero_is_refused_naming_the_flag(tmp_path):
  r = run_cli("chains", ["--config=configs/toy_capacity.py:8,tiny", "--chains=full,0",
                         f"--workdir={tmp_path / 'w'}"])
  assert_one_line(r, 2, "--chains: chain '0' (sampling.respacing='0'")
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.parametrize("name", ["checkpoints", "samples", "eval"])
def test_a_file_where_the_workdir_needs_a_folder_is_refused_before_training(tmp_path, name):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / name).write_text("a user's file")
  r = run_cli("main", ["--config=configs/toy_capacity.py:8,tiny", f"--workdir={workdir}"])
  assert_one_line(r, 2, f"{workdir / name} is not a directory")
  assert sorted(os.listdir(workdir)) == [name]  # nothing trained, nothing recorded
  assert (workdir / name).read_text() == "a user's file"


# --- outputs that would destroy an input, found by the adversarial pass -------------------

def _npz(path, n):
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.savez(path, np.random.default_rng(n).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
  with open(path, "rb") as f:
    return f.read()


@pytest.mark.parametrize("flags,needle", [
    (["--out=s.npz"], "--out 's.npz' is the same file as --samples"),
    (["--out=o.json", "--per-sample=l.npz"], "--per-sample 'l.npz' is the same file as --samples"),
    (["--out=o.json", "--per-sample=h.npz"], "--per-sample 'h.npz' is the same file as --train"),
    (["--out=o.json", "--grid=o.json"], "--grid 'o.json': expected a .png file"),
    (["--out=o.json", "--grid=g.png", "--hist=g.png"], "--hist 'g.png' is the same file as --grid"),
])
def test_replicates_never_writes_over_its_inputs_or_twice_to_one_file(tmp_path, flags, needle):
  samples, train = _npz(tmp_path / "s.npz", 10), _npz(tmp_path / "t.npz", 20)
  os.symlink(tmp_path / "s.npz", tmp_path / "l.npz")
  os.link(tmp_path / "t.npz", tmp_path / "h.npz")
  r = run_cli("replicates", ["--samples=s.npz", "--train=t.npz"] + flags, cwd=tmp_path)
  assert_one_line(r, 2, needle)
  assert (tmp_path / "s.npz").read_bytes() == samples
  assert (tmp_path / "t.npz").read_bytes() == train
  assert not (tmp_path / "o.json").exists()


def test_convert_refuses_to_write_over_its_input(tmp_path):
  data = _npz(tmp_path / "in.npz", 2)
  os.symlink(tmp_path / "in.npz", tmp_path / "link.msgpack")
  for out in ("in.npz", "link.msgpack", "./in.npz"):
    r = run_cli("convert", ["in.npz", out], cwd=tmp_path)
    assert_one_line(r, 2, f"output '{out}' is the same file as input 'in.npz'")
  assert (tmp_path / "in.npz").read_bytes() == data


@pytest.mark.parametrize("name,content,needle", [
    ("README.md", b"# notes\n", "give a file ending in .npz"),
    ("mine.npz", b"a user's file, not a zip", "exists and is not an npz file"),
])
def test_export_never_replaces_a_file_it_did_not_write(tmp_path, name, content, needle):
  (tmp_path / name).write_bytes(content)
  r = run_cli("export", ["--config=configs/toy_capacity.py:8", f"--out={tmp_path / name}"])
  assert_one_line(r, 2, needle)
  assert (tmp_path / name).read_bytes() == content
  assert sorted(os.listdir(tmp_path)) == [name]


@pytest.mark.parametrize("args", [["--num_train=0"], ["--sizes", "0"], ["--num_fresh=-1"],
                                  ["--num_train=1000000000"]])
def test_data_checks_bounds_its_numbers(args):
  assert_one_line(run_cli_module("mem_diffusion.data.checks", args), 2, "expected --sizes in 8..512")


def run_cli_module(module, args):
  env = th.subprocess_env(1)
  return subprocess.run([sys.executable, "-m", module] + list(args), cwd=th.REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_an_override_key_with_spaces_is_one_line(tmp_path):
  r = run_cli("sweep", [f"--root={tmp_path / 'r'}", "--configs=configs/toy_capacity.py:8,tiny",
                        "--set= training.num_steps =5"])
  assert_one_line(r, 2, "--set ' training.num_steps =5': no config section ' training'")


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_parity_reads_no_special_file(tmp_path, kind):
  """np.load blocked on a FIFO for ever; /dev/zero was reported as pickled data."""
  path = "/dev/zero" if kind == "dev_zero" else str(tmp_path / "p.npz")
  if kind == "fifo":
    os.mkfifo(path)
  r = run_cli("parity", [path], timeout=60)
  assert r.returncode == 2, r.stdout + r.stderr
  expected = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
  assert r.stdout.strip() == f"{path}: ERROR cannot read: {path}: {expected}, not a regular file"
