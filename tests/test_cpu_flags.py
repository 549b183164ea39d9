"""The project's XLA:CPU defaults: added only where the installed jaxlib knows them."""

import os
import subprocess
import sys


from mem_diffusion import cpu_flags


def test_binary_scan_finds_a_name_and_misses_an_absent_one(tmp_path):
  lib = tmp_path / "lib.so"
  lib.write_bytes(b"\0junk\0--xla_some_flag\0" + cpu_flags.YNN_FLAG_NAME.encode() + b"\0")
  empty = tmp_path / "empty.so"
  empty.write_bytes(b"")
  assert cpu_flags.binary_knows(cpu_flags.YNN_FLAG_NAME, [str(empty), str(lib)])
  assert not cpu_flags.binary_knows("xla_cpu_no_such_flag", [str(lib)])
  assert not cpu_flags.binary_knows(cpu_flags.YNN_FLAG_NAME,
                                    [str(empty), str(tmp_path / "missing.so")])


def test_flag_added_only_when_known_and_not_set_by_the_user():
  known, unknown = (lambda name: True), (lambda name: False)
  assert cpu_flags.with_cpu_defaults("", knows=known) == cpu_flags.YNN_FLAG
  assert cpu_flags.with_cpu_defaults("--xla_cpu_max_isa=AVX2", knows=known) == (
      "--xla_cpu_max_isa=AVX2 " + cpu_flags.YNN_FLAG)
  assert cpu_flags.with_cpu_defaults("--xla_cpu_max_isa=AVX2", knows=unknown) == (
      "--xla_cpu_max_isa=AVX2")
  mine = f"--{cpu_flags.YNN_FLAG_NAME}=default"
  assert cpu_flags.with_cpu_defaults(mine, knows=known) == mine


def test_apply_respects_the_opt_out():
  env = {cpu_flags.OPT_OUT: "0", "XLA_FLAGS": "--a=1"}
  cpu_flags.apply(env, knows=lambda name: True)
  assert env["XLA_FLAGS"] == "--a=1"
  env = {"XLA_FLAGS": "--a=1"}
  cpu_flags.apply(env, knows=lambda name: True)
  assert env["XLA_FLAGS"] == "--a=1 " + cpu_flags.YNN_FLAG
  env = {}
  cpu_flags.apply(env, knows=lambda name: False)
  assert "XLA_FLAGS" not in env


def _start_jax(xla_flags: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = xla_flags
  env[cpu_flags.OPT_OUT] = "0"
  return subprocess.run(
      [sys.executable, "-c", "import jax; print(float(jax.numpy.ones(3).sum()))"],
      env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_scan_agrees_with_xla_on_the_installed_jaxlib():
  """What the guard protects against: XLA aborts the process on a flag it
  does not know. A made-up flag is unknown to the scan and kills JAX; the
  project's flag is added only if the scan finds it, and then JAX starts."""
  bogus = "xla_cpu_mem_diffusion_no_such_flag"
  assert not cpu_flags.jaxlib_knows(bogus)
  assert _start_jax(f"--{bogus}=1").returncode != 0
  if cpu_flags.jaxlib_knows(cpu_flags.YNN_FLAG_NAME):
    started = _start_jax(cpu_flags.YNN_FLAG)
    assert started.returncode == 0, started.stderr[-2000:]
    assert started.stdout.strip().endswith("3.0")
  else:  # a jaxlib without the flag: the package must leave XLA_FLAGS alone
    assert cpu_flags.with_cpu_defaults("") == ""


def test_the_package_sets_it_before_jax_starts():
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", cpu_flags.OPT_OUT)}
  out = subprocess.run(
      [sys.executable, "-c",
       "import os, mem_diffusion, jax; jax.numpy.ones(1).block_until_ready(); "
       "print(os.environ.get('XLA_FLAGS', ''))"],
      env=env, capture_output=True, text=True, timeout=120, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  expected = cpu_flags.YNN_FLAG if cpu_flags.jaxlib_knows(cpu_flags.YNN_FLAG_NAME) else ""
  assert out.stdout.strip().splitlines()[-1:] == ([expected] if expected else [])
