"""The parity checker: the reference files pass, and it reads other files in that format."""

import glob
import json

import jax.numpy as jnp
import numpy as np
import pytest

from mem_diffusion.port import convert
from mem_diffusion.port import parity

REFERENCE_FILES = sorted(glob.glob("tests/data/*.npz"))


def _lines(capsys):
  return [l for l in capsys.readouterr().out.splitlines() if l.strip()]


def test_reference_files_pass_and_every_result_array_is_compared(capsys):
  assert len(REFERENCE_FILES) >= 2
  assert parity.main(REFERENCE_FILES) == 0
  out = "\n".join(_lines(capsys))
  for path in REFERENCE_FILES:
    with np.load(path) as data:
      results = [k for k in data.files if not k.startswith("param/") and k not in parity._INPUT_KEYS]
    for k in results:
      line = [l for l in out.splitlines() if l.startswith(f"{path}:{k} ")]
      assert len(line) == 1 and line[0].rstrip().split()[3] == "PASS", (k, line)
  assert "SKIP" not in out and "FAIL" not in out


def _linear_file(path, **overrides):
  """A diffusion file for a 1000-step linear chain, values from the paper's formulas."""
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  ac = np.cumprod(1 - betas)
  kept = np.arange(0, 1000, 10)
  spaced_ac = ac[kept]
  arrays = {
      "config_json": np.array(json.dumps({"steps": 1000, "schedule": "linear", "learn_sigma": False,
                                          "spacings": ["ddim100", "1000"]})),
      "base/betas": betas, "base/alphas_cumprod": ac,
      "base/alphas_cumprod_prev": np.append(1.0, ac[:-1]),
      "respace/ddim100": kept, "respace/1000": np.arange(1000),
      "spaced/spacing": np.array("ddim100"),
      "spaced/alphas_cumprod": spaced_ac,
      "spaced/betas": 1 - spaced_ac / np.append(1.0, spaced_ac[:-1]),
  }
  arrays.update(overrides)
  np.savez(path, **arrays)
  return str(path)


def test_other_schedule_step_count_and_spacing(tmp_path, capsys):
  good = _linear_file(tmp_path / "linear.npz")
  assert parity.main([good]) == 0
  lines = _lines(capsys)
  assert len(lines) == 7 and all(l.endswith("PASS") for l in lines)
  bad_betas = np.linspace(1e-4, 0.02, 1000) * (1 + 1e-4)
  bad = _linear_file(tmp_path / "bad.npz", **{"base/betas": bad_betas,
                                              "respace/ddim100": np.arange(0, 1000, 10) + 1})
  assert parity.main([bad]) == 1
  failed = [l for l in _lines(capsys) if l.endswith("FAIL")]
  assert [l.split(":")[1].split()[0] for l in failed] == ["base/betas", "respace/ddim100"]


@pytest.fixture(scope="module")
def unconditional_unet():
  """A UNet file for an unconditional, fixed-variance, no-scale-shift, 4-head model.

  `out` is this port's own output, so the check is of the plumbing (reading
  the config, converting param/*, no labels, 3 channels), not of the numbers.
  """
  kwargs = {"in_channels": 3, "model_channels": 32, "out_channels": 3, "num_res_blocks": 1,
            "attention_resolutions": [1], "dropout": 0.0, "channel_mult": [1, 2],
            "num_classes": None, "num_heads": 4, "use_scale_shift_norm": False}
  model = convert.unet_from_torch_kwargs(kwargs)
  rng = np.random.default_rng(0)
  shapes = convert.abstract_params(model)
  import jax  # pylint: disable=g-import-not-at-top
  params = jax.tree_util.tree_map(
      lambda s: rng.uniform(-0.2, 0.2, s.shape).astype(np.float32), shapes)
  x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  t = np.array([10.0, 900.0], np.float32)
  out = np.asarray(parity.make_apply(model, params, None)(jnp.asarray(x), jnp.asarray(t)))
  arrays = {"param/" + k: v for k, v in convert.flax_to_torch_state_dict(params).items()}
  arrays.update(config_json=np.array(json.dumps(kwargs)), x=x.transpose(0, 3, 1, 2), t_model=t,
                out=out.transpose(0, 3, 1, 2))
  return arrays


def test_other_unet_options(tmp_path, capsys, unconditional_unet):
  path = tmp_path / "unet_b.npz"
  np.savez(path, **unconditional_unet)
  assert parity.main([str(path)]) == 0
  assert _lines(capsys)[0].endswith("PASS")
  broken = dict(unconditional_unet)
  broken["out"] = broken["out"] + 1e-3
  np.savez(path, **broken)
  assert parity.main([str(path)]) == 1
  assert _lines(capsys)[0].endswith("FAIL")


def test_unreadable_or_empty_files(tmp_path, capsys):
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not a zip file")
  assert parity.main([str(junk)]) == 2
  assert parity.main([str(tmp_path / "missing.npz")]) == 2
  lines = _lines(capsys)
  assert len(lines) == 2 and all("ERROR" in l for l in lines)
  inputs_only = tmp_path / "inputs.npz"
  np.savez(inputs_only, x0=np.zeros((1, 3, 2, 2), np.float32), config_json=np.array("{}"))
  assert parity.main([str(inputs_only)]) == 1
  assert "nothing to compare" in capsys.readouterr().out
  no_cfg = tmp_path / "nocfg.npz"
  np.savez(no_cfg, **{"base/betas": np.ones(3)})
  assert parity.main([str(no_cfg)]) == 2
  assert "config_json" in capsys.readouterr().out
  bad_cfg = _linear_file(tmp_path / "sched.npz", config_json=np.array(
      json.dumps({"steps": 10, "schedule": "sigmoid"})))
  assert parity.main([bad_cfg]) == 2
  assert "sigmoid" in capsys.readouterr().out
