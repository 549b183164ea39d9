"""The huge-page malloc re-exec: when it happens, and that it takes effect."""

import os
import subprocess
import sys

import pytest

from mem_diffusion import cpu_flags
from mem_diffusion import huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = dict(platform="linux", glibc=(2, 36), mode="madvise")


def test_sets_the_tunable_and_the_marker_keeping_the_rest():
  env = huge_pages.environment_with_huge_pages({"PATH": "/bin"}, **GOOD)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                 huge_pages.REEXEC_MARKER: "1"}
  other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  env = huge_pages.environment_with_huge_pages(other, **GOOD)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ,kwargs", [
    ({}, dict(platform="darwin")),
    ({}, dict(glibc=None)),          # musl or another C library
    ({}, dict(glibc=(2, 34))),       # before the tunable existed
    ({}, dict(mode="always")),       # the kernel already does it
    ({}, dict(mode="never")),        # it would be ignored
    ({}, dict(mode=None)),           # no THP at all
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # the user's choice wins
    ({cpu_flags.OPT_OUT: "0"}, {}),  # all CPU defaults off
    ({huge_pages.REEXEC_MARKER: "1"}, {}),  # never twice
])
def test_does_nothing(environ, kwargs):
  assert huge_pages.environment_with_huge_pages(environ, **{**GOOD, **kwargs}) is None


@pytest.mark.parametrize("text,mode", [
    ("always [madvise] never\n", "madvise"),
    ("[always] madvise never\n", "always"),
    ("always madvise [never]\n", "never"),
    ("garbage\n", None),
])
def test_thp_mode(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert huge_pages.thp_mode(str(path)) == mode
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


def test_glibc_version_is_read():
  version = huge_pages.glibc_version()
  assert version is None or (len(version) == 2 and version >= (2, 17))


def test_the_process_replaces_itself_once(tmp_path):
  """A script that calls it first: on this machine it re-executes exactly
  when the decision says so, keeps its pid and arguments, and the new process
  runs with the tunable (glibc parsed it: the variable is what it was given)."""
  script = tmp_path / "probe.py"
  script.write_text(
      "import os, sys\n"
      f"sys.path.insert(0, {REPO!r})\n"
      "from mem_diffusion import huge_pages\n"
      "print('start', os.getpid(), flush=True)\n"
      "huge_pages.reexec_with_huge_pages()\n"
      "print('args', sys.argv[1:], os.environ.get('GLIBC_TUNABLES', ''),\n"
      "      os.environ.get(huge_pages.REEXEC_MARKER, ''), flush=True)\n")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", huge_pages.REEXEC_MARKER, cpu_flags.OPT_OUT)}
  out = subprocess.run([sys.executable, str(script), "--x=1"], env=env,
                       capture_output=True, text=True, check=True, timeout=60).stdout
  lines = out.splitlines()
  starts = [l for l in lines if l.startswith("start")]
  expected = huge_pages.environment_with_huge_pages(
      env, platform=sys.platform, glibc=huge_pages.glibc_version(),
      mode=huge_pages.thp_mode())
  assert lines[-1].startswith("args ['--x=1']")
  if expected is None:
    assert len(starts) == 1 and "hugetlb" not in lines[-1], out
  else:
    assert len(starts) == 2 and starts[0] == starts[1], out  # same pid, twice
    assert lines[-1].endswith("glibc.malloc.hugetlb=1 1"), out
  # Opted out: runs once, untouched.
  out = subprocess.run([sys.executable, str(script)], env={**env, cpu_flags.OPT_OUT: "0"},
                       capture_output=True, text=True, check=True, timeout=60).stdout
  assert out.count("start") == 1 and "hugetlb" not in out
