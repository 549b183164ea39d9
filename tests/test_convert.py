"""PyTorch state_dict <-> Flax params conversion and its CLI."""

import json
import os

import jax
import numpy as np
import pytest

from mem_diffusion.port import convert

GOLDEN = "tests/data/unet_a.npz"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN, allow_pickle=False) as d:
    state = {k[len("param/"):]: d[k] for k in d.files if k.startswith("param/")}
    cfg = json.loads(str(d["config_json"]))
    x, t, y, out = d["x"].transpose(0, 2, 3, 1), d["t_model"], d["y"], d["out"]
  return dict(state=state, cfg=cfg, model=convert.unet_from_torch_kwargs(cfg),
              inputs=(x, t, y), out=out.transpose(0, 2, 3, 1))


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_round_trip_is_exact(golden):
  params = convert.torch_state_dict_to_flax(golden["state"], golden["model"])
  assert params["input_blocks_3_1"]["qkv"]["kernel"].shape == (1, 1, 64, 192)
  assert params["input_blocks_0_0"]["kernel"].shape == (3, 3, 3, 32)
  assert params["time_embed_0"]["kernel"].shape == (32, 128)
  back = convert.flax_to_torch_state_dict(params)
  assert sorted(back) == sorted(golden["state"])
  for name, array in golden["state"].items():
    assert back[name].shape == array.shape, name
    np.testing.assert_array_equal(back[name], array, err_msg=name)


def test_layouts(golden):
  """A spot check of each transpose against the PyTorch meaning of the axes."""
  state = golden["state"]
  params = convert.torch_state_dict_to_flax(state, golden["model"])
  conv = state["input_blocks.1.0.in_layers.2.weight"]  # (O, I, kh, kw)
  np.testing.assert_array_equal(
      params["input_blocks_1_0"]["in_layers_2"]["kernel"][2, 0, 5, 7], conv[7, 5, 2, 0])
  qkv = state["middle_block.1.qkv.weight"]  # (O, I, 1)
  np.testing.assert_array_equal(params["middle_block_1"]["qkv"]["kernel"][0, 0, 3, 100],
                                qkv[100, 3, 0])
  lin = state["time_embed.2.weight"]  # (out, in)
  np.testing.assert_array_equal(params["time_embed_2"]["kernel"][4, 9], lin[9, 4])
  np.testing.assert_array_equal(params["label_emb"]["embedding"], state["label_emb.weight"])
  np.testing.assert_array_equal(params["out_0"]["scale"], state["out.0.weight"])


def test_missing_extra_and_misshaped_keys_are_named(golden):
  state = dict(golden["state"])
  del state["middle_block.1.qkv.bias"]
  state["input_blocks.99.0.op.weight"] = np.zeros((1,), np.float32)
  state["out.2.weight"] = state["out.2.weight"][:3]
  with pytest.raises(ValueError) as err:
    convert.torch_state_dict_to_flax(state, golden["model"])
  msg = str(err.value)
  assert "missing (1): middle_block.1.qkv.bias" in msg
  assert "unexpected (1): input_blocks.99.0.op.weight" in msg
  assert "wrong shape (1): out.2.weight" in msg


def test_conditional_mismatch_gives_a_hint(golden):
  model = golden["model"].clone(num_classes=None)
  with pytest.raises(ValueError, match="class-conditional: set model.num_classes"):
    convert.torch_state_dict_to_flax(golden["state"], model)


def test_unet_from_torch_kwargs_rejects_unknown_arguments(golden):
  with pytest.raises(ValueError, match="unknown UNetModel arguments"):
    convert.unet_from_torch_kwargs({**golden["cfg"], "use_fp16": True})
  with pytest.raises(ValueError, match="num_heads_upsample"):
    convert.unet_from_torch_kwargs({**golden["cfg"], "num_heads_upsample": 1})


def _write_config(tmp_path, **model):
  """A config file in the repo's style, building on configs/default.py."""
  lines = ["import sys", f"sys.path.insert(0, {REPO!r})", "from configs import default", "",
           "def get_config(arg=''):", "  c = default.get_config(arg)"]
  lines += [f"  c.model.{k} = {v!r}" for k, v in model.items()]
  lines += ["  return c", ""]
  path = tmp_path / "cfg.py"
  path.write_text("\n".join(lines))
  return str(path)


def test_cli_npz_round_trip_gives_the_reference_output(golden, tmp_path):
  # The config route: a config describing unet_a (32 channels, attention at 16x16).
  cfg = _write_config(tmp_path, model_channels=32, num_res_blocks=1, num_heads=2,
                      attention_resolutions=(16,), num_classes=10, dropout=0.0)
  out_cfg, out_json = str(tmp_path / "a.msgpack"), str(tmp_path / "b.msgpack")
  convert.main([GOLDEN, out_cfg, "--config", cfg])
  convert.main([GOLDEN, out_json])  # the file's own config_json
  direct = _flat(convert.torch_state_dict_to_flax(golden["state"], golden["model"]))
  for path in (out_cfg, out_json):
    loaded = convert.load_params(path)
    flat = _flat(loaded)
    assert sorted(flat) == sorted(direct)
    for k in direct:
      np.testing.assert_array_equal(flat[k], direct[k], err_msg=k)
  out = jax.jit(golden["model"].apply)({"params": loaded}, *golden["inputs"])
  np.testing.assert_allclose(np.asarray(out), golden["out"], atol=1e-4, rtol=1e-3)


def test_cli_config_that_does_not_fit_is_one_message(tmp_path):
  with pytest.raises(SystemExit) as err:
    convert.main([GOLDEN, str(tmp_path / "x.msgpack"), "--config", "configs/default.py:tiny"])
  msg = str(err.value.code)
  assert msg.startswith(f"convert: {GOLDEN}: state_dict does not fit the model")
  assert "... and" in msg  # long lists are cut
  assert not (tmp_path / "x.msgpack").exists()


@pytest.mark.parametrize("content,match", [
    (None, "not found"),
    (b"not a zip", "not a readable .npz"),
    ("no_params", "no 'param/<name>' arrays"),
])
def test_cli_bad_npz_files(tmp_path, content, match):
  path = tmp_path / "in.npz"
  if content == "no_params":
    np.savez(path, x=np.zeros(3))
  elif content is not None:
    path.write_bytes(content)
  with pytest.raises(SystemExit, match=match):
    convert.main([str(path), str(tmp_path / "out.msgpack")])


def test_cli_bad_config_arguments(tmp_path):
  out = str(tmp_path / "o.msgpack")
  with pytest.raises(SystemExit, match="unknown config argument 'bogus'"):
    convert.main([GOLDEN, out, "--config", "configs/default.py:bogus"])
  with pytest.raises(SystemExit, match="config file 'nope.py' not found"):
    convert.main([GOLDEN, out, "--config", "nope.py"])


def test_cli_pt_route(golden, tmp_path):
  """With PyTorch: a real state_dict .pt converts; without: a clear message."""
  path = tmp_path / "model.pt"
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    path.write_bytes(b"whatever")
    with pytest.raises(SystemExit, match="needs PyTorch"):
      convert.main([str(path), str(tmp_path / "o.msgpack"), "--config",
                    "configs/default.py"])
    return
  torch.save({k: torch.from_numpy(v) for k, v in golden["state"].items()}, path)
  cfg = _write_config(tmp_path, model_channels=32, num_res_blocks=1, num_heads=2,
                      attention_resolutions=(16,), num_classes=10)
  convert.main([str(path), str(tmp_path / "o.msgpack"), "--config", cfg])
  loaded = _flat(convert.load_params(str(tmp_path / "o.msgpack")))
  direct = _flat(convert.torch_state_dict_to_flax(golden["state"], golden["model"]))
  assert all(np.array_equal(loaded[k], direct[k]) for k in direct)
