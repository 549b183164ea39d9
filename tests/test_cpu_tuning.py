"""The entry points' CPU tuning: each mechanism's switch, the platform rule, the
XLA guard, and the huge-page restart."""

import os
import subprocess
import sys

import pytest

from mem_diffusion.run import cpu_tuning
from mem_diffusion.run import micro_batches
from mem_diffusion.run import parallel
from mem_diffusion.run import state as state_lib
from mem_diffusion.run import train
import train_helpers as th

KNOWN, UNKNOWN = (lambda name: True), (lambda name: False)


def test_binary_scan_finds_a_name_and_misses_an_absent_one(tmp_path):
  lib = tmp_path / "lib.so"
  lib.write_bytes(b"\0junk\0--xla_some_flag\0" + cpu_tuning.YNN_FLAG_NAME.encode() + b"\0")
  empty = tmp_path / "empty.so"
  empty.write_bytes(b"")
  assert cpu_tuning.binary_knows(cpu_tuning.YNN_FLAG_NAME, [str(empty), str(lib)])
  assert not cpu_tuning.binary_knows("xla_cpu_no_such_flag", [str(lib)])
  assert not cpu_tuning.binary_knows(cpu_tuning.YNN_FLAG_NAME,
                                     [str(empty), str(tmp_path / "missing.so")])


def test_flag_added_only_when_known_and_not_set_by_the_user():
  assert cpu_tuning.with_xla_tuning("", knows=KNOWN) == cpu_tuning.YNN_FLAG
  assert cpu_tuning.with_xla_tuning("--xla_cpu_max_isa=AVX2", knows=KNOWN) == (
      "--xla_cpu_max_isa=AVX2 " + cpu_tuning.YNN_FLAG)
  assert cpu_tuning.with_xla_tuning("--xla_cpu_max_isa=AVX2", knows=UNKNOWN) == (
      "--xla_cpu_max_isa=AVX2")
  mine = f"--{cpu_tuning.YNN_FLAG_NAME}=default"
  assert cpu_tuning.with_xla_tuning(mine, knows=KNOWN) == mine


@pytest.mark.parametrize("flag,env,expected", [
    (None, {}, True),                       # default on
    (None, {"X": "0"}, False), (None, {"X": "off"}, False),
    (None, {"X": "1"}, True), (None, {"X": "true"}, True),
    (True, {"X": "0"}, True),               # the command line wins
    (False, {"X": "1"}, False),
])
def test_switch_flag_then_environment_then_default(flag, env, expected):
  assert cpu_tuning.switch(flag, env, "X") is expected


def test_a_bad_switch_value_is_an_error():
  with pytest.raises(ValueError, match="X='maybe'"):
    cpu_tuning.switch(None, {"X": "maybe"}, "X")


@pytest.mark.parametrize("platforms,accelerator,expected", [
    ("cpu", True, True),          # JAX_PLATFORMS decides, first entry first
    ("cuda", False, False),
    ("cuda,cpu", False, False),
    ("CPU,cuda", True, True),
    ("", True, False),            # unset: JAX prefers an accelerator it finds
    ("", False, True),
])
def test_platform_is_decided_without_a_backend(platforms, accelerator, expected):
  env = {"JAX_PLATFORMS": platforms} if platforms else {}
  assert cpu_tuning.runs_on_cpu(env, accelerator=lambda: accelerator) is expected


HUGE = "glibc.malloc.hugetlb=1"


def _tuned(env, **kwargs):
  kwargs = {"on_cpu": True, "knows": KNOWN, "huge_pages_work": lambda: True, **kwargs}
  return cpu_tuning.tuned_environment(env, **kwargs)


def test_each_switch_turns_off_only_its_own_mechanism():
  env = {"XLA_FLAGS": "--a=1"}
  xla = {"XLA_FLAGS": f"--a=1 {cpu_tuning.YNN_FLAG}"}
  huge = {"GLIBC_TUNABLES": HUGE}
  assert _tuned(env) == {**xla, **huge}
  assert _tuned(env, xla_cpu_tuning=False) == huge
  assert _tuned(env, huge_pages=False) == xla
  assert _tuned({**env, cpu_tuning.XLA_TUNING_ENV: "0"}) == huge
  assert _tuned({**env, cpu_tuning.HUGE_PAGES_ENV: "0"}) == xla
  assert _tuned({**env, cpu_tuning.XLA_TUNING_ENV: "0"}, xla_cpu_tuning=True) == {**xla, **huge}
  assert _tuned(env, xla_cpu_tuning=False, huge_pages=False) == {}


def test_tuning_applies_only_on_cpu_where_it_can_and_keeps_the_users_values():
  env = {"XLA_FLAGS": "--a=1"}
  assert _tuned(env, on_cpu=False) == {}
  assert _tuned(env, knows=UNKNOWN, huge_pages_work=lambda: False) == {}
  mine = {"XLA_FLAGS": f"--{cpu_tuning.YNN_FLAG_NAME}=default",
          "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
  assert _tuned(mine) == {}
  other = _tuned({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, xla_cpu_tuning=False)
  assert other == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + HUGE}


@pytest.mark.parametrize("kwargs,works", [
    (dict(platform="linux", glibc=(2, 36), mode="madvise"), True),
    (dict(platform="darwin", glibc=(2, 36), mode="madvise"), False),
    (dict(platform="linux", glibc=(2, 34), mode="madvise"), False),  # before the tunable
    (dict(platform="linux", glibc=(2, 36), mode="always"), False),   # the kernel does it
    (dict(platform="linux", glibc=(2, 36), mode="never"), False),    # it would be ignored
])
def test_huge_pages_only_where_the_tunable_changes_something(kwargs, works):
  assert cpu_tuning.huge_pages_help(**kwargs) is works


@pytest.mark.parametrize("text,mode", [
    ("always [madvise] never\n", "madvise"), ("[always] madvise never\n", "always"),
    ("garbage\n", None)])
def test_thp_mode(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert cpu_tuning.thp_mode(str(path)) == mode
  assert cpu_tuning.thp_mode(str(tmp_path / "missing")) is None


def test_apply_sets_children_and_passes_explicit_switches_on():
  said = []
  env = {"JAX_PLATFORMS": "cpu"}
  switches = {cpu_tuning.XLA_TUNING_ENV: "0", cpu_tuning.HUGE_PAGES_ENV: "0"}
  assert cpu_tuning.apply(env, xla_cpu_tuning=False, huge_pages=False,
                          say=said.append) == switches
  assert env == {"JAX_PLATFORMS": "cpu", **switches} and not said
  # Without a restart the tunable is set for the children (a sweep's workers).
  env = {"JAX_PLATFORMS": "cpu"}
  changes = cpu_tuning.apply(env, xla_cpu_tuning=False, say=said.append)
  huge = cpu_tuning.huge_pages_help()
  assert changes == ({"GLIBC_TUNABLES": HUGE} if huge else {}) | {cpu_tuning.XLA_TUNING_ENV: "0"}
  assert env.get("GLIBC_TUNABLES") == (HUGE if huge else None) and not said


def test_a_failed_restart_runs_on_without_huge_pages(monkeypatch):
  monkeypatch.setattr(cpu_tuning, "huge_pages_help", lambda: True)
  monkeypatch.setattr(cpu_tuning.os, "execve", lambda *a: (_ for _ in ()).throw(OSError("gone")))
  monkeypatch.setattr(cpu_tuning, "under_debugger", lambda: False)
  said, env = [], {"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  changes = cpu_tuning.apply(env, xla_cpu_tuning=False, restart=True, say=said.append)
  assert "GLIBC_TUNABLES" not in changes and env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
  assert said[0].startswith("cpu tuning: restarting") and "failed" in said[-1]


def test_the_tuning_switch_leaves_micro_batches_alone(monkeypatch):
  """Micro-batching is the config's alone: neither the tuning's switch nor
  the retired all-in-one variable changes how a step is split."""
  mesh = parallel.data_mesh()
  for name in (cpu_tuning.XLA_TUNING_ENV, "MEM_DIFFUSION_XLA_CPU_DEFAULTS"):
    monkeypatch.setenv(name, "0")
  for a in (1, 2):
    config = th.micro_config(training__micro_batches=a)
    step = train.make_train_step(*state_lib.parts(config)[:4], config, mesh)
    assert isinstance(step, micro_batches.MicroBatchedStep) is (a > 1)


def _python(code: str, *args, **env_changes) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "GLIBC_TUNABLES", "JAX_PLATFORMS", cpu_tuning.XLA_TUNING_ENV,
                      cpu_tuning.HUGE_PAGES_ENV)}
  env.update(env_changes)
  return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                        text=True, timeout=120, check=False, cwd=th.REPO)


def test_the_scan_agrees_with_xla_on_the_installed_jaxlib():
  """What the guard protects against: XLA aborts the process on a flag it
  does not know. A made-up flag is unknown to the scan and kills JAX; the
  project's flag is added only if the scan finds it, and then JAX starts."""
  start = "import jax; print(float(jax.numpy.ones(3).sum()))"
  bogus = "xla_cpu_mem_diffusion_no_such_flag"
  assert not cpu_tuning.jaxlib_knows(bogus)
  assert _python(start, XLA_FLAGS=f"--{bogus}=1").returncode != 0
  if cpu_tuning.jaxlib_knows(cpu_tuning.YNN_FLAG_NAME):
    started = _python(start, XLA_FLAGS=cpu_tuning.YNN_FLAG)
    assert started.returncode == 0, started.stderr[-2000:]
    assert started.stdout.strip().endswith("3.0")
  else:  # a jaxlib without the flag: nothing is added
    assert cpu_tuning.with_xla_tuning("") == ""


PROBE = ("import os, sys; print('start', os.getpid(), flush=True)\n"
         "from mem_diffusion.run import cli\n"
         "{before}cli.prepare_process(None, None)\n"
         "print('args', sys.argv[1:], flush=True)\n"
         "for k in ('XLA_FLAGS', 'GLIBC_TUNABLES'): print(k + '=' + os.environ.get(k, ''))\n"
         "import jax; jax.numpy.ones(1).block_until_ready(); print('started')\n")


def _probe(before: str = "", **env) -> tuple[list[str], list[str], dict[str, str]]:
  """(start lines, 'cpu tuning' lines, the variables the JAX process saw)."""
  out = _python(PROBE.format(before=before), "--x=1", **env)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[-1] == "started" and "args ['--x=1']" in lines, lines
  seen = dict(l.split("=", 1) for l in lines[-3:-1])
  return ([l for l in lines if l.startswith("start ")],
          [l for l in lines if l.startswith("cpu tuning")], seen)


@pytest.mark.slow  # a subprocess or a whole run: kept out of the fast suite's 5 minutes
def test_an_entry_point_tunes_itself_before_jax_starts_and_says_so():
  """On CPU both mechanisms, each announced; the huge pages by one restart
  (same pid and arguments); each switch turns off only its own."""
  xla = cpu_tuning.YNN_FLAG if cpu_tuning.jaxlib_knows(cpu_tuning.YNN_FLAG_NAME) else ""
  huge = HUGE if cpu_tuning.huge_pages_help() else ""
  starts, said, seen = _probe(JAX_PLATFORMS="cpu")
  assert seen == {"XLA_FLAGS": xla, "GLIBC_TUNABLES": huge}
  assert len(said) == bool(xla) + bool(huge)
  assert len(starts) == 1 + bool(huge) and len(set(starts)) == 1  # one pid
  starts, said, seen = _probe(JAX_PLATFORMS="cpu", **{cpu_tuning.HUGE_PAGES_ENV: "0"})
  assert seen == {"XLA_FLAGS": xla, "GLIBC_TUNABLES": ""} and len(starts) == 1
  starts, said, seen = _probe(JAX_PLATFORMS="cpu", **{cpu_tuning.XLA_TUNING_ENV: "0"})
  assert seen == {"XLA_FLAGS": "", "GLIBC_TUNABLES": huge}
  # A debugger or profiler keeps the process as started (and says so).
  starts, said, seen = _probe("sys.setprofile(lambda *a: None)\n", JAX_PLATFORMS="cpu")
  assert len(starts) == 1 and seen["GLIBC_TUNABLES"] == ""


def test_an_accelerator_run_is_left_as_started():
  out = _python("import os; from mem_diffusion.run import cli; cli.prepare_process(None, None); "
                "print(os.environ.get('XLA_FLAGS', ''), os.environ.get('GLIBC_TUNABLES', ''))",
                JAX_PLATFORMS="cuda,cpu")
  assert out.returncode == 0 and out.stdout.split() == [], out.stdout + out.stderr[-2000:]
