"""The replicate CLI (`python -m mem_diffusion.replicates`): bad inputs, round trips, options."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mem_diffusion import npz_io
from mem_diffusion.analysis import replicates
from mem_diffusion.analysis import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_bad_inputs(d):
  imgs = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  cases = {
      "missing": None,
      "text": "not an archive",
      "float01": imgs.astype(np.float32) / 255,
      "float11": imgs.astype(np.float32) / 127.5 - 1,
      "nan": np.full((6, 8, 8, 3), np.nan, np.float32),
      "rank3": imgs[0],
      "nchw": imgs.transpose(0, 3, 1, 2),
      "empty": imgs[:0],
      "mismatch": np.zeros((6, 16, 16, 3), np.uint8),
      "object": np.array([imgs, None], dtype=object),
      "nokey": "nokey",
      "labels": "labels",
      "int64": imgs.astype(np.int64),
  }
  paths = {}
  for name, value in cases.items():
    path = os.path.join(d, f"{name}.npz")
    paths[name] = path
    if value is None:
      continue
    if isinstance(value, str) and name == "text":
      with open(path, "w") as f:
        f.write(value)
    elif name == "nokey":
      np.savez(path, images=imgs)
    elif name == "labels":
      np.savez(path, imgs, np.arange(3))
    elif value.dtype == object:
      np.savez(path, value)  # pickled inside the archive
    else:
      np.savez(path, value)
  good = os.path.join(d, "good.npz")
  np.savez(good, imgs)
  return paths, good


def test_cli_bad_inputs_one_line_each(tmp_path, capsys):
  paths, good = _write_bad_inputs(str(tmp_path))
  for name, path in paths.items():
    rc = replicates.main(["--samples", path, "--train", good, "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc != 0, name
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in err
  assert not (tmp_path / "r.json").exists()


@pytest.mark.slow  # a subprocess or a whole run: kept out of the fast suite's 5 minutes
def test_cli_round_trip_subprocess(tmp_path):
  data = synthetic.synthetic_set(13, num_train=120, num_copies=10, num_blend2=6, num_novel=8,
                                  image_size=16)
  s, t = tmp_path / "S.npz", tmp_path / "T.npz"
  np.savez(s, data["samples"], np.zeros(data["samples"].shape[0], np.int64))
  np.savez(t, data["train"])
  out, per, grid = tmp_path / "r.json", tmp_path / "p.npz", tmp_path / "nn.png"
  cmd = [sys.executable, "-m", "mem_diffusion.replicates", "--samples", str(s), "--train", str(t),
         "--out", str(out), "--per-sample", str(per), "--grid", str(grid), "--threshold", "0.333",
         "--blend-k", "6"]
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr
  report = json.loads(out.read_text())
  arrays = np.load(per)
  assert report["num_samples"] == 24 and report["blend_k"] == 6 and report["threshold"] == 0.333
  assert report["num_replicates"] == int(arrays["is_replicate"].sum()) >= 10
  assert "0" in report["per_class"]
  for key in ("nn1", "nn2", "d1", "d2", "ratio", "rho", "is_replicate", "is_blend"):
    assert arrays[key].shape == (24,), key
  assert grid.stat().st_size > 1000
  assert "replicate_ratio_dedup" in report and "replicate_ci95_dedup" in report
  assert f"duplicate-aware {report['num_replicates_dedup']} =" in proc.stdout
  bad = subprocess.run(cmd[:4] + [str(tmp_path / "nope.npz")] + cmd[5:], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=300)
  assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "no such file" in bad.stderr


def test_cli_acceptance_on_unseen_synthetic_set(tmp_path):
  """Done-when of the issue, with a seed no other test uses (32x32 images)."""
  data = synthetic.synthetic_set(90517, num_train=1000, num_copies=200, num_blend2=200,
                                  num_novel=300, blend_weights=(0.2, 0.8))
  s, t, out, per = (tmp_path / n for n in ("S.npz", "T.npz", "r.json", "p.npz"))
  np.savez(s, data["samples"])
  np.savez(t, data["train"])
  assert replicates.main(["--samples", str(s), "--train", str(t), "--out", str(out),
                          "--per-sample", str(per)]) == 0
  arrays = np.load(per)
  kind = data["kind"]
  flagged = arrays["is_replicate"] | arrays["is_blend"]
  assert arrays["is_replicate"][kind == 0].mean() >= 0.99
  assert arrays["is_blend"][kind == 2].mean() >= 0.90
  assert flagged[kind == 4].mean() <= 0.01


def test_cli_dup_rms_option(tmp_path, capsys):
  train = np.random.default_rng(4).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
  train[9] = np.clip(train[2].astype(int) + 1, 0, 255)  # RMS <= 1 from image 2
  s, t, out = tmp_path / "S.npz", tmp_path / "T.npz", tmp_path / "r.json"
  np.savez(s, train[2:3])
  np.savez(t, train)
  args = ["--samples", str(s), "--train", str(t), "--out", str(out), "--blend-k", "0"]
  assert replicates.main(args) == 0
  assert "1 duplicate pairs in 1 groups merged" in capsys.readouterr().out
  assert json.loads(out.read_text())["dup_rms"] == 2.0
  assert replicates.main(args + ["--dup-rms", "0"]) == 0
  assert "0 duplicate pairs in 0 groups merged" in capsys.readouterr().out
  assert replicates.main(args + ["--dup-rms", "-1"]) == 2
  assert capsys.readouterr().err.startswith("error: dup_rms=-1.0")


def test_nearest_neighbors_row_label_shows_dash_for_untested_rho():
  from mem_diffusion import report as report_lib  # pylint: disable=import-outside-toplevel
  per = {"ratio": np.array([0.1, 1.0, 0.8]), "rho": np.array([np.nan, np.nan, 0.2]),
         "is_replicate": np.array([True, False, False]),
         "is_replicate_dedup": np.array([True, True, False]),
         "is_blend": np.array([False, False, True])}
  labels = [report_lib.row_label(per, i) for i in range(3)]
  assert labels == ["d1/d2=0.100\nrho=-\nREPLICATE", "d1/d2=1.000\nrho=-\nREPLICATE (dedup)",
                    "d1/d2=0.800\nrho=0.200\nBLEND"]
  assert not any("nan" in label for label in labels)


def test_load_npz_accepts_improved_diffusion_format(tmp_path):
  imgs = np.zeros((3, 4, 4, 3), np.uint8)
  np.savez(tmp_path / "a.npz", imgs, np.array([1, 2, 3]))
  x, y = npz_io.load_npz(str(tmp_path / "a.npz"))
  assert x.shape == (3, 4, 4, 3) and y.tolist() == [1, 2, 3]


def test_cli_full_disk_when_writing_the_report_is_one_line_exit_1(tmp_path, capsys,
                                                                    monkeypatch):
  from mem_diffusion import errors, files  # pylint: disable=g-import-not-at-top,g-multiple-import
  images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  samples, train = str(tmp_path / "samples.npz"), str(tmp_path / "train.npz")
  np.savez(samples, arr_0=images)
  np.savez(train, arr_0=images)

  def full(*args, **kwargs):
    raise errors.OutputError("cannot write r.json: No space left on device (0 B free)")

  monkeypatch.setattr(files, "write_json", full)
  rc = replicates.main(["--samples", samples, "--train", train, "--out", str(tmp_path / "r.json")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1 and err[0].startswith("error: cannot write r.json"), err
