"""What the records' digests cost (mem_diffusion/run/records.py).

  python benchmarks/record_digests.py

Prints the best of three timings of each SHA-256 a run computes: the
samples file of 4,000 32x32 samples (each sample or eval check), the
UNet-128 EMA params with and without the device-to-host copy (each
checkpoint save and each over-training point), and a params file of the
same size (each check of a `sampling.params_file` run).
docs/reliability.md ("An output is reused only while its record matches")
has the numbers.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import numpy as np  # pylint: disable=g-import-not-at-top

from mem_diffusion import config as config_lib  # pylint: disable=g-import-not-at-top
from mem_diffusion import files  # pylint: disable=g-import-not-at-top
from mem_diffusion.run import metrics, parallel, records  # pylint: disable=g-import-not-at-top,g-multiple-import
from mem_diffusion.run import state as state_lib  # pylint: disable=g-import-not-at-top


def best(fn, rounds: int = 3) -> float:
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as folder:
    npz = os.path.join(folder, "samples_4000x32x32x3.npz")
    files.write_npz(npz, arr_0=rng.integers(0, 256, (4000, 32, 32, 3), np.uint8),
                    arr_1=np.zeros(4000, np.int64))
    print(f"samples file, {os.path.getsize(npz):,} bytes: "
          f"{best(lambda: records.file_digest(npz)) * 1e3:.0f} ms")
    config = config_lib.load_config("configs/default.py")
    abstract = state_lib.abstract_state(config, parallel.data_mesh())
    ema = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                       abstract.ema_params)
    size = sum(x.nbytes for x in jax.tree.leaves(ema))
    print(f"UNet-128 EMA params, {size / 2**20:.0f} MiB: "
          f"{best(lambda: metrics.tree_sha256(ema)):.2f} s")
    on_device = jax.device_put(ema)
    print(f"  with the device-to-host copy: "
          f"{best(lambda: metrics.tree_sha256(parallel.fetch(on_device))):.2f} s")
    params_file = os.path.join(folder, "params.msgpack")
    files.write_bytes(params_file, rng.bytes(size))
    print(f"params file, {size / 2**20:.0f} MiB: "
          f"{best(lambda: records.file_digest(params_file)):.2f} s")


if __name__ == "__main__":
  main()
