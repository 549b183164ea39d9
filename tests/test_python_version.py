"""An old Python gets one line, at install and at start.

Python 3.10 (a stock TPU VM's, Ubuntu 22.04's) is simulated by replacing
sys.version_info before the entry point runs: the check reads nothing else.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AS_PYTHON_310 = ("import runpy, sys\n"
                 "sys.version_info = (3, 10, 12, 'final', 0)\n"
                 "sys.argv = sys.argv[1:]\n")


@pytest.mark.parametrize("start", [
    "runpy.run_path('main.py', run_name='__main__')",
    "runpy.run_module('mem_diffusion.sweep', run_name='__main__', alter_sys=True)",
    "runpy.run_module('mem_diffusion.experiments.sweep', run_name='__main__', alter_sys=True)",
])
def test_an_old_python_stops_with_one_error_line(start):
  proc = subprocess.run([sys.executable, "-c", AS_PYTHON_310 + start, "prog", "--help"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: mem-diffusion needs Python >= 3.11; ")
  assert "is Python 3.10" in lines[0] and "python3.11" in lines[0]
  assert proc.stdout == ""


def test_the_check_parses_on_old_pythons():
  """No f-strings or annotations: the module must run where the package would not compile."""
  with open(os.path.join(ROOT, "mem_diffusion", "python_version.py")) as f:
    source = f.read()
  assert not re.search(r"\bf[\"']", source)
  assert "->" not in source and "from __future__" not in source


def test_requirements_stop_at_once_on_an_old_python():
  """pip on 3.10 finds no jax >= 0.7 (all Requires-Python >= 3.11) and stops, naming it,
  instead of backtracking through older releases of everything else."""
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
  assert re.fullmatch(r"jax>=0\.(\d+)(\.\d+)?", lines[0]), lines[0]
  assert int(lines[0].split(".")[1]) >= 7
  for name in ("requirements-tpu.txt", "requirements-cuda.txt"):
    with open(os.path.join(ROOT, name)) as f:
      jax_line = [l for l in f if l.startswith("jax[")][0]
    assert int(re.search(r">=0\.(\d+)", jax_line).group(1)) >= 7, (name, jax_line)
