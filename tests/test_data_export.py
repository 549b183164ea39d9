"""The export CLI: npz + manifest, byte-identical for the same config, and
one preview grid per source."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import default
from mem_diffusion.data import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"dataset": "mondrian", "num_original": 24, "dummy_kind": "geometric",
             "num_dummy": 16, "image_size": 8, "seed": 3}


@pytest.mark.slow
def test_export_cli_is_byte_identical_and_previews(tmp_path):
  out_a = str(tmp_path / "a" / "set.npz")
  cmd = [sys.executable, "-m", "mem_diffusion.data.export",
         "--config=configs/default.py", f"--out={out_a}",
         f"--preview={tmp_path / 'prev'}", "--preview_prefix=data_", "--preview_scale=1"]
  cmd += [f"--config.data.{k}={v}" for k, v in OVERRIDES.items()]
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["sources"] == {"geometric": 16, "mondrian": 24}
  # The fraction of frequency bins the car supplies under each reading (8x8, 0.25).
  masks = summary["hybrid_masks"]
  assert (masks["hybrid_mask"], masks["hybrid_cutoff"]) == ("bin_fraction", 0.25)
  assert {k: v["bins"] for k, v in masks["bins_kept"].items()} == {
      "corner_radius": 9, "nyquist_radius": 5, "bin_fraction": 16}
  assert masks["bins_kept"]["bin_fraction"]["fraction"] == 0.25

  # Same config, another process: the same bytes.
  cfg = default.get_config().data
  for k, v in OVERRIDES.items():
    setattr(cfg, k, v)
  out_b = str(tmp_path / "b" / "set.npz")
  ts = export.export(cfg, out_b)
  for a, b in [(out_a, out_b), (export.manifest_path(out_a), export.manifest_path(out_b))]:
    with open(a, "rb") as fa, open(b, "rb") as fb:
      assert fa.read() == fb.read(), a
  with zipfile.ZipFile(out_a) as zf:
    assert [i.date_time for i in zf.infolist()] == [(1980, 1, 1, 0, 0, 0)] * 2

  with np.load(out_a, allow_pickle=False) as f:
    np.testing.assert_array_equal(f["arr_0"], ts.images)
    np.testing.assert_array_equal(f["arr_1"], [0] * 24 + [1] * 16)
    assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (40, 8, 8, 3)
  with open(export.manifest_path(out_a)) as f:
    manifest = json.load(f)
  assert manifest["num_classes"] == 2 and manifest["data_config"]["seed"] == 3
  assert manifest["images"][24] == {"source": "geometric", "index": 0, "label": 1}
  assert len(manifest["images"]) == 40

  for source, n in [("mondrian", 24), ("geometric", 16)]:
    with Image.open(tmp_path / "prev" / f"data_{source}.png") as im:
      cols = int(np.ceil(np.sqrt(n)))
      assert im.size == (cols * 9 + 1, -(-n // cols) * 9 + 1)


def test_hybrid_readings_figure(tmp_path):
  cfg = default.get_config().data
  cfg.image_size = 8
  path = export.write_hybrid_readings(cfg, str(tmp_path), prefix="data_", count=2)
  assert path == str(tmp_path / "data_hybrid_readings.png")
  with Image.open(path) as im:
    assert im.size[0] > 400 and im.size[1] > 300
  assert export.hybrid_mask_bins(32, 0.25) == {
      "corner_radius": {"bins": 101.0, "fraction": 0.098633},
      "nyquist_radius": {"bins": 49.0, "fraction": 0.047852},
      "bin_fraction": {"bins": 256.0, "fraction": 0.25}}


def _export_cli(tmp_path, *args):
  cmd = [sys.executable, "-m", "mem_diffusion.data.export", "--config=configs/default.py",
         *args] + [f"--config.data.{k}={v}" for k, v in OVERRIDES.items()]
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a subprocess or a whole run: kept out of the fast suite's 5 minutes
def test_export_refuses_to_overwrite_a_users_json_or_write_previews_badly(tmp_path):
  """Every path the export writes is checked before the build; nothing of the
  user's is replaced, and each mistake is one line with exit 2."""
  mine = tmp_path / "mine.json"
  mine.write_text('{"my": "notes"}')
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  cases = [
      ([f"--out={tmp_path / 'mine.npz'}"], "not a manifest written by this command"),
      ([f"--out={tmp_path / 'set.json'}"], "give a file ending in .npz"),
      ([f"--preview={a_file}"], "is a file, not a directory"),
      ([f"--preview={a_file / 'sub'}"], "is a file, not a directory"),
      ([f"--preview={tmp_path / 'p'}", "--preview_count=0"], "--preview_count (0)"),
  ]
  for args, message in cases:
    proc = _export_cli(tmp_path, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (args, lines)
  assert mine.read_text() == '{"my": "notes"}' and a_file.read_text() == "x"
  assert not (tmp_path / "mine.npz").exists() and not (tmp_path / "p").exists()
