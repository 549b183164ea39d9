"""No process-wide side effects at import; the run's environment recorded and checked;
bounded caches of compiled steps."""

import os
import subprocess
import sys

import pytest

from mem_diffusion import errors
from mem_diffusion.run import environment
from mem_diffusion.run import parallel
from mem_diffusion.run import state as state_lib
from mem_diffusion.run import train
import train_helpers as th


def _python(code: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("TF_", "MEM_DIFFUSION_")) and k not in ("XLA_FLAGS", "MPLBACKEND")}
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300, check=False, cwd=th.REPO)


NO_JAX = ("mem_diffusion", "mem_diffusion.data", "mem_diffusion.report", "mem_diffusion.analysis",
          "mem_diffusion.run.cli", "mem_diffusion.run.cpu_tuning",
          "mem_diffusion.run.environment")
WITH_JAX = ("mem_diffusion.data.train_set", "mem_diffusion.analysis.replicates",
            "mem_diffusion.run.train", "mem_diffusion.run.stages",
            "mem_diffusion.experiments.sweep")


def test_importing_the_package_changes_no_environment_and_starts_no_backend():
  """JAX itself sets two variables when imported (TF_CPP_MIN_LOG_LEVEL,
  TPU_SKIP_MDS_QUERY), so modules that import JAX are compared with the
  environment after `import jax`; the package adds nothing to either."""
  out = _python(
      "import importlib, os, sys\n"
      "before = dict(os.environ)\n"
      f"for m in {NO_JAX!r}:\n"
      "  importlib.import_module(m)\n"
      "  assert dict(os.environ) == before, (m, set(os.environ.items()) ^ set(before.items()))\n"
      "assert 'jax' not in sys.modules\n"
      "import jax\n"
      "from jax._src import xla_bridge\n"
      "before = dict(os.environ)\n"
      f"for m in {WITH_JAX!r}:\n"
      "  importlib.import_module(m)\n"
      "  assert dict(os.environ) == before, (m, set(os.environ.items()) ^ set(before.items()))\n"
      "assert not xla_bridge._backends, 'a JAX backend started at import'\n"
      "assert 'tensorflow' not in sys.modules\n"
      "print('clean')\n")
  assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr[-3000:]


def test_drawing_a_report_keeps_the_callers_matplotlib_backend(tmp_path):
  path = tmp_path / "h.png"
  out = _python(
      "import matplotlib, numpy as np\n"
      "matplotlib.use('pdf')\n"
      "from mem_diffusion import report\n"
      f"report.ratio_histogram(np.linspace(0, 1, 50), {str(path)!r})\n"
      "print(matplotlib.get_backend())\n")
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["pdf"]
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


RECORDED = {"platform": "cpu", "device_kind": "cpu", "num_devices": 4, "jax": "0.10.2",
            "jaxlib": "0.10.2", "xla_flags": "", "glibc_tunables": ""}


@pytest.mark.parametrize("key,value", [("xla_flags", "--xla_cpu_enable_fast_math=true"),
                                       ("jaxlib", "0.11.0"), ("device_kind", "NVIDIA H100"),
                                       ("platform", "gpu")])
def test_a_changed_fact_that_changes_numbers_is_refused(key, value, monkeypatch):
  monkeypatch.delenv(environment.ACCEPT_ENV, raising=False)
  current = {**RECORDED, key: value}
  with pytest.raises(errors.ConfigError, match=f"{key}: ") as e:
    environment.check_resume(RECORDED, current)
  assert "\n" not in str(e.value) and "--accept_environment_change" in str(e.value)
  note = environment.check_resume(RECORDED, current, accept=True)
  assert note.startswith("note: ") and key in note
  monkeypatch.setenv(environment.ACCEPT_ENV, "1")
  assert environment.check_resume(RECORDED, current) == note


def test_facts_that_do_not_change_numbers_and_old_records_pass():
  same = {**RECORDED, "num_devices": 1, "glibc_tunables": "glibc.malloc.hugetlb=1"}
  assert environment.check_resume(RECORDED, same, accept=False) is None
  assert environment.check_resume(None, RECORDED, accept=False) is None  # before records
  partial = {k: v for k, v in RECORDED.items() if k != "xla_flags"}
  assert environment.check_resume(partial, {**RECORDED, "xla_flags": "--x"},
                                  accept=False) is None


def test_the_config_json_record_splits_into_config_and_facts():
  config, facts = environment.split_record({"seed": 0, environment.RECORD_KEY: RECORDED})
  assert config == {"seed": 0} and facts == RECORDED
  assert environment.split_record({"seed": 0}) == ({"seed": 0}, None)


def test_facts_name_this_process():
  facts = environment.facts(parallel.data_mesh().devices.flat, micro_batches=2,
                            environ={"XLA_FLAGS": "--x", "GLIBC_TUNABLES": "t"})
  assert facts["platform"] == "cpu" and facts["num_devices"] == 4
  assert facts["xla_flags"] == "--x" and facts["glibc_tunables"] == "t"
  assert facts["micro_batches"] == 2 and facts["jax"] and facts["jaxlib"]
  assert set(environment.CHECKED) <= set(facts)


def test_bounded_cache_drops_the_least_recently_used():
  cache = state_lib.BoundedCache(2)
  made = []

  def get(key):
    return cache.get(key, lambda: made.append(key) or key.upper())
  assert [get("a"), get("b"), get("a"), get("c")] == ["A", "B", "A", "C"]
  assert len(cache) == 2 and made == ["a", "b", "c"]
  get("a")  # kept: used more recently than b
  get("b")  # dropped before, made again
  assert made == ["a", "b", "c", "b"] and len(cache) == 2


def test_compiled_step_caches_do_not_grow_past_their_bound():
  mesh = parallel.data_mesh()
  steps = []
  for i in range(train._BUILD_CACHE.size + 3):  # pylint: disable=protected-access
    config = th.micro_config(training__learning_rate=1e-3 * (i + 1))
    steps.append(train.build(config, mesh)[-1])
    assert len(train._BUILD_CACHE) <= train._BUILD_CACHE.size  # pylint: disable=protected-access
    assert len(state_lib._PARTS) <= state_lib._PARTS.size  # pylint: disable=protected-access
  assert train.build(config, mesh)[-1] is steps[-1]  # the latest is still cached
  assert train.build(th.micro_config(training__learning_rate=1e-3), mesh)[-1] is not steps[0]
