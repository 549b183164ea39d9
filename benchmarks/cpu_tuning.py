"""What each CPU mechanism gains, side by side: the XLA flag, huge pages, micro-batches.

  python benchmarks/cpu_tuning.py --repeats=2

The machine may be shared, so the variants alternate: each repeat runs, in
turn, every variant of the toy training loop (benchmarks/toy_step.py
--mode=loop) and of the UNet-128 train step at batch 8
(benchmarks/train_step.py), each in a fresh process whose environment says
what is on:

- `all`: the XLA:CPU flag and glibc's huge-page malloc
  (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), as mem_diffusion/run/cpu_tuning.py
  sets them;
- `no_xla_flag`, `no_huge_pages`: the same with one of them off.

Then, with --micro_batch_size > 0, one process of benchmarks/micro_batches.py
times the UNet-128 step at that batch as 1 and as --micro_batches splits
(in-process, alternated). A compilation cache shared by the children (a
fresh temporary folder) keeps the repeats from recompiling. The children get
both switches off (MEM_DIFFUSION_XLA_CPU_TUNING=0, MEM_DIFFUSION_HUGE_PAGES=0)
and the variables exactly as listed, so the comparison does not depend on the
entry points' own defaults.

Each reading is given twice: by the wall clock, and by the process's CPU
time (user + system) per step, which other jobs on a shared machine disturb
less (they still do: spinning threads count too). Prints one line per child
and, last, a JSON line: per variant every reading of the toy loop's ms/step
and CPU ms/step and of the UNet step's images/s and CPU s/step, and the
micro-batch splits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mem_diffusion.run import cpu_tuning  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_integer("repeats", 2, "Alternations of every variant.")
flags.DEFINE_integer("toy_steps", 150, "Toy loop steps per round (2 rounds per process).")
flags.DEFINE_integer("unet_steps", 2, "UNet-128 steps per round (2 rounds per process).")
flags.DEFINE_integer("unet_batch_size", 8, "Batch of the UNet-128 step in the variant runs.")
flags.DEFINE_integer("micro_batch_size", 32, "Batch of the micro-batch comparison (0: skip it).")
flags.DEFINE_integer("micro_batches", 4, "The split compared with one whole-batch step.")
flags.DEFINE_list("variants", ["all", "no_xla_flag", "no_huge_pages"], "Variants to run.")
flags.DEFINE_bool("toy", True, "Time the toy loop.")
flags.DEFINE_bool("unet", True, "Time the UNet-128 step.")
FLAGS = flags.FLAGS

VARIANTS = {"all": (True, True), "no_xla_flag": (False, True), "no_huge_pages": (True, False),
            "none": (False, False)}


def environment(variant: str, cache: str) -> dict[str, str]:
  xla_flag, huge = VARIANTS[variant]
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES")}
  env.update({cpu_tuning.XLA_TUNING_ENV: "0", cpu_tuning.HUGE_PAGES_ENV: "0",
              "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu",
              "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0",
              "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))})
  if xla_flag and cpu_tuning.jaxlib_knows(cpu_tuning.YNN_FLAG_NAME):
    env["XLA_FLAGS"] = cpu_tuning.YNN_FLAG
  if huge:
    env["GLIBC_TUNABLES"] = f"{cpu_tuning.TUNABLE}=1"
  return env


def run_json(args: list[str], env: dict[str, str]) -> dict:
  """One benchmark process; its last JSON line."""
  out = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                       text=True, check=False)
  if out.returncode != 0:
    raise SystemExit(f"failed: {' '.join(args)}\n{out.stderr[-3000:]}")
  return json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])


def main(argv):
  del argv
  cache = tempfile.mkdtemp(prefix="cpu_tuning_cache_")
  toy = {v: [] for v in FLAGS.variants}
  unet = {v: [] for v in FLAGS.variants}
  toy_cpu = {v: [] for v in FLAGS.variants}
  unet_cpu = {v: [] for v in FLAGS.variants}
  for r in range(FLAGS.repeats):
    order = FLAGS.variants if r % 2 == 0 else FLAGS.variants[::-1]
    for v in order:
      env = environment(v, cache)
      if FLAGS.toy:
        res = run_json(["benchmarks/toy_step.py", "--mode=loop", f"--steps={FLAGS.toy_steps}",
                        "--rounds=2"], env)
        toy[v].append(res["ms_per_step"])
        toy_cpu[v].append(round(res["user_cpu_ms_per_step"] + res["sys_cpu_ms_per_step"], 2))
        print(f"repeat {r + 1} {v}: toy {res['ms_per_step']} ms/step, CPU {toy_cpu[v][-1]} "
              f"ms/step (system {res['sys_cpu_ms_per_step']})", flush=True)
      if FLAGS.unet:
        res = run_json(["benchmarks/train_step.py", "--config=configs/default.py",
                        f"--batch_size={FLAGS.unet_batch_size}", f"--steps={FLAGS.unet_steps}",
                        "--rounds=2", "--matmul_size=1024"], env)
        unet[v].append(res["images_per_second"])
        unet_cpu[v].append(res["cpu_seconds_per_step"])
        print(f"repeat {r + 1} {v}: UNet-128 batch {FLAGS.unet_batch_size} "
              f"{res['images_per_second']} images/s, CPU {res['cpu_seconds_per_step']} s/step",
              flush=True)
  result = {"toy_ms_per_step": toy, "toy_cpu_ms_per_step": toy_cpu,
            "unet_images_per_second": unet, "unet_cpu_seconds_per_step": unet_cpu}
  if FLAGS.micro_batch_size:
    a = FLAGS.micro_batches
    res = run_json(["benchmarks/micro_batches.py", f"--batch_size={FLAGS.micro_batch_size}",
                    f"--micro_batches={a},1", "--steps=1", "--rounds=2"], environment("all", cache))
    result["micro_batches"] = {k: res[k] for k in ("batch_size", "images_per_second",
                                                   "cpu_seconds_per_step",
                                                   "minor_faults_per_step")}
    print(f"UNet-128 batch {FLAGS.micro_batch_size} by number of micro-batches: "
          f"{res['images_per_second']} images/s, CPU {res['cpu_seconds_per_step']} s/step",
          flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
