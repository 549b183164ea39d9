"""`sweep --jobs=J` on accelerator hosts: which devices each worker gets.

No GPU is needed: the host is simulated through the environment the sweep
reads (CUDA_VISIBLE_DEVICES, a fake nvidia-smi listing), and the workers are
stand-ins that record the environment they were given.
"""

import json
import os
import subprocess
import sys

import pytest

from mem_diffusion import errors
from mem_diffusion.experiments import devices
from mem_diffusion.experiments import sweep
from mem_diffusion.experiments import workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = ["configs/toy_capacity.py:n=4,tiny", "configs/toy_capacity.py:n=6,tiny"]
NO_GPU = lambda: ()  # pylint: disable=unnecessary-lambda-assignment
NO_TPU = lambda: 0  # pylint: disable=unnecessary-lambda-assignment

SMI = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)
"""
SMI_MIG = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)
  MIG 3g.20gb     Device  0: (UUID: MIG-1111)
  MIG 3g.20gb     Device  1: (UUID: MIG-2222)
"""


@pytest.mark.parametrize("environ,platform,ids", [
    ({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "0,1"}, "cpu", ()),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, "gpu", ("2", "3")),
    ({"JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": "1"}, "gpu", ("1",)),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, "gpu", ("0",)),  # CUDA stops at an invalid id
    ({"CUDA_VISIBLE_DEVICES": ""}, "cpu", ()),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, "cpu", ()),
    ({}, "cpu", ()),
])
def test_detect_reads_the_environment(environ, platform, ids):
  host = devices.detect(environ, gpu_ids=NO_GPU, tpu_chips=NO_TPU)
  assert (host.platform, host.devices) == (platform, ids)


def test_detect_without_environment_asks_nvidia_smi_then_the_tpu_files():
  host = devices.detect({}, gpu_ids=lambda: ("0", "1", "2"), tpu_chips=NO_TPU)
  assert (host.platform, host.devices, host.source) == ("gpu", ("0", "1", "2"), "nvidia-smi -L")
  host = devices.detect({}, gpu_ids=NO_GPU, tpu_chips=lambda: 4)
  assert (host.platform, len(host.devices)) == ("tpu", 4)


def test_devices_flag_overrides_the_count():
  assert devices.detect({}, override=0, gpu_ids=lambda: ("0",)).platform == "cpu"
  host = devices.detect({"CUDA_VISIBLE_DEVICES": "4,5,6"}, override=2, gpu_ids=NO_GPU)
  assert host.devices == ("4", "5")
  assert devices.detect({}, override=3, gpu_ids=NO_GPU).devices == ("0", "1", "2")
  with pytest.raises(errors.ConfigError, match="--devices=3, but CUDA_VISIBLE_DEVICES=0 names 1"):
    devices.detect({"CUDA_VISIBLE_DEVICES": "0"}, override=3, gpu_ids=NO_GPU)


@pytest.mark.parametrize("stdout,ids", [(SMI, ("0", "1")), (SMI_MIG, ("MIG-1111", "MIG-2222"))])
def test_nvidia_smi_listing(stdout, ids):
  def run(cmd, **_):
    assert cmd == ["nvidia-smi", "-L"]
    return subprocess.CompletedProcess(cmd, 0, stdout, "")
  assert devices.nvidia_smi_ids(run) == ids


def test_no_nvidia_smi_means_no_gpu():
  def missing(cmd, **_):
    raise FileNotFoundError(2, "No such file", cmd[0])
  assert devices.nvidia_smi_ids(missing) == ()
  failing = lambda cmd, **_: subprocess.CompletedProcess(cmd, 9, "", "no driver")  # pylint: disable=unnecessary-lambda-assignment
  assert devices.nvidia_smi_ids(failing) == ()


def test_gpu_slots_split_the_devices():
  host = devices.Host("gpu", ("0", "1", "2", "3"), "test")
  one = devices.slots(host, 4, 1)
  assert [s.env for s in one] == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(4)]
  assert all(s.cpu == -1 for s in one)  # no core pinning on a GPU host
  two = devices.slots(host, 2, 2)
  assert [(s.env["CUDA_VISIBLE_DEVICES"], s.label) for s in two] == [
      ("0,1", "gpus 0,1"), ("2,3", "gpus 2,3")]


def test_jobs_that_do_not_fit_are_refused():
  host = devices.Host("gpu", ("0", "1", "2", "3"), "CUDA_VISIBLE_DEVICES=0,1,2,3")
  with pytest.raises(errors.ConfigError, match=r"--jobs=3 x --devices_per_run=2 needs 6 GPUs; "
                     r"this host has 4 \(CUDA_VISIBLE_DEVICES=0,1,2,3\): lower --jobs to 2"):
    devices.slots(host, 3, 2)
  with pytest.raises(errors.ConfigError, match="TPU host"):
    devices.slots(devices.Host("tpu", ("0", "1", "2", "3"), "test"), 2, 1)
  assert len(devices.slots(devices.Host("tpu", ("0",), "test"), 1, 1)) == 1


def test_cpu_slots_pin_one_core_each_when_they_fit():
  host = devices.Host("cpu", (), "test")
  assert [(s.cpu, s.env) for s in devices.slots(host, 2, 1, cores=[3, 5])] == [(3, {}), (5, {})]
  assert [s.cpu for s in devices.slots(host, 3, 1, cores=[3, 5])] == [-1, -1, -1]


# A stand-in worker: writes what it was given, as a run's worker would see it.
RECORD = ("import json, os, sys\n"
          "print(json.dumps({'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), 'argv': sys.argv[1:],"
          " 'cpus': sorted(os.sched_getaffinity(0))}), flush=True)\n")


def _recording_workers(monkeypatch):
  def command(spec, seed, root, overrides, cache, verbose, cpu):
    return [sys.executable, "-c", RECORD, f"--pin_cpu={cpu}"]
  monkeypatch.setattr(workers, "worker_command", command)


def _logged(tmp_path):
  out = {}
  for name in ("toy_capacity_4", "toy_capacity_6"):
    with open(tmp_path / name / "seed0" / "sweep.log") as f:
      out[name] = json.loads(f.read().splitlines()[-1])
  return out


def test_a_sweep_on_a_simulated_2_gpu_host_gives_each_worker_its_own_device(
    tmp_path, monkeypatch, capsys):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
  _recording_workers(monkeypatch)
  with pytest.raises(errors.RunFailedError):  # the stand-ins finish no run
    sweep.sweep(SPECS, [0], str(tmp_path), compile_cache="none", jobs=2)
  seen = _logged(tmp_path)
  assert sorted(s["cuda"] for s in seen.values()) == ["0", "1"]
  assert all(s["argv"] == ["--pin_cpu=-1"] for s in seen.values())
  assert all(s["cpus"] == sorted(os.sched_getaffinity(0)) for s in seen.values())
  out = capsys.readouterr().out
  assert "(gpu 0)" in out and "(gpu 1)" in out


def test_a_sweep_on_a_cpu_host_pins_and_hides_no_device(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  _recording_workers(monkeypatch)
  with pytest.raises(errors.RunFailedError):
    sweep.sweep(SPECS, [0], str(tmp_path), compile_cache="none", jobs=2)
  seen = _logged(tmp_path).values()
  assert all(s["cuda"] is None for s in seen)
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) >= 2:
    assert sorted(s["argv"][0] for s in seen) == sorted(f"--pin_cpu={c}" for c in cores[:2])


def test_too_many_jobs_is_one_error_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES")}
  proc = subprocess.run(
      [sys.executable, "-m", "mem_diffusion.sweep", "--jobs=3", "--devices=2",
       f"--configs={SPECS[0]}", f"--root={tmp_path}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --jobs=3 x --devices_per_run=1 needs 3"), (
      proc.stderr)
  assert not os.listdir(tmp_path)


def test_the_parent_starts_no_jax_backend(tmp_path):
  """A backend in the parent would take GPU memory the workers need."""
  script = (
      "import sys\n"
      "from mem_diffusion import errors\n"
      "from mem_diffusion.experiments import sweep, workers\n"
      "workers.worker_command = lambda *a: [sys.executable, '-c', 'pass']\n"
      "try:\n"
      f"  sweep.sweep({SPECS!r}, [0], {str(tmp_path)!r}, compile_cache='none', jobs=2)\n"
      "except errors.RunFailedError:\n"
      "  pass\n"
      "from jax._src import xla_bridge\n"
      "print('backend started:', xla_bridge.backends_are_initialized())\n")
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1")
  env.pop("JAX_PLATFORMS", None)
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "(gpu 0)" in proc.stdout and "(gpu 1)" in proc.stdout
  assert proc.stdout.strip().splitlines()[-1] == "backend started: False"
