"""The Flax UNet against the PyTorch reference (tests/data/unet_a.npz) and the
reference's published sizes; anything that computes uses small models."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from mem_diffusion.port import convert
from mem_diffusion.models import UNet, unet_from_config
from mem_diffusion.models.flops import forward_flops
from mem_diffusion.models.layers import GroupNorm32

GOLDEN = "tests/data/unet_a.npz"
ZERO_INIT_MODULES = ("out_layers_3", "proj_out", "out_2")


@pytest.fixture(scope="module")
def golden():
  """unet_a's reference arguments, converted params, NHWC inputs and output."""
  with np.load(GOLDEN, allow_pickle=False) as d:
    data = {k: d[k] for k in d.files}
  cfg = json.loads(str(data["config_json"]))
  state = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
  model = convert.unet_from_torch_kwargs(cfg)
  params = convert.torch_state_dict_to_flax(state, model)
  inputs = (jnp.asarray(data["x"].transpose(0, 2, 3, 1)), jnp.asarray(data["t_model"]),
            jnp.asarray(data["y"]))
  return dict(cfg=cfg, params=params, inputs=inputs,
              ref=data["out"].transpose(0, 2, 3, 1))


def test_matches_reference_unet_a(golden):
  model = convert.unet_from_torch_kwargs(golden["cfg"])
  golden_out = np.asarray(jax.jit(model.apply)({"params": golden["params"]}, *golden["inputs"]))
  ref = golden["ref"]
  assert golden_out.shape == ref.shape and golden_out.dtype == np.float32
  err = np.abs(golden_out - ref)
  rel = err / np.maximum(np.abs(ref), 1e-30)
  print(f"unet_a parity: max abs {err.max():.3g}, max rel {rel.max():.3g}, "
        f"output scale {np.abs(ref).max():.3g}")
  assert np.all((err <= 1e-4) | (rel <= 1e-3)), (err.max(), rel.max())
  assert err.max() < 1e-4


def _unet128(num_classes=0):
  cfg = default.get_config()
  cfg.model.num_classes = num_classes
  return unet_from_config(cfg.model, cfg.data.image_size)


@pytest.mark.parametrize("num_classes,expected", [(0, 52_546_438), (10, 52_551_558)])
def test_unet128_parameter_count(num_classes, expected):
  model = _unet128(num_classes)
  params = convert.abstract_params(model)
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == expected
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_unet128_forward_flops():
  """16.8 GFLOP per 32x32 image = 2 x 8.4G multiply-adds (paper convention).

  XLA's own count is a few % lower: it skips the padding taps of padded
  convolutions; it is checked against that bound from the lowered HLO
  (no compilation).
  """
  model = _unet128()
  flops = forward_flops(model, 32)
  assert abs(flops / 16.8e9 - 1) < 0.005, flops
  x, t = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))
  params = jax.eval_shape(model.init, jax.random.key(0), x, t)
  cost = jax.jit(model.apply).lower(params, x, t).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert 0.9 < cost["flops"] / flops < 1.0, cost["flops"]


def _tiny_unet(**overrides):
  kwargs = dict(in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                attention_resolutions=(2,), channel_mult=(1, 2), num_classes=3,
                num_heads=2, use_scale_shift_norm=True)
  return UNet(**{**kwargs, **overrides})


TINY_X = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
TINY_T, TINY_Y = jnp.array([3.0, 900.0]), jnp.array([0, 2])


@pytest.fixture(scope="module")
def fresh():
  """A freshly initialised tiny model and its output (one compilation)."""
  # XLA's CPU optimisations of ~100 threefry sites dominate this compilation
  # (~30 s CPU); they change nothing in the values, so they are turned down.
  args = (jax.random.key(0), TINY_X, TINY_T, TINY_Y)
  init = jax.jit(_tiny_unet().init_with_output).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True})
  out, variables = init(*args)
  return variables["params"], np.asarray(out)


@pytest.fixture(scope="module")
def tiny_forward(fresh):
  """Tiny model with perturbed params (so no output is zero), run as float32
  eval, bfloat16 eval and float32 train with dropout 0.3, in one jit."""
  params, _ = fresh
  rng = np.random.default_rng(2)  # numpy: no per-shape compilations
  params = jax.tree.map(
      lambda p: (np.asarray(p) + 0.05 * rng.standard_normal(p.shape)).astype(np.float32), params)
  plain, f32 = _tiny_unet(), _tiny_unet(dropout=0.3)
  bf16 = _tiny_unet(dropout=0.3, dtype=jnp.bfloat16)
  inputs = (TINY_X, TINY_T, TINY_Y)

  @jax.jit
  def run(params, key):
    v = {"params": params}
    return dict(eval=f32.apply(v, *inputs), plain=plain.apply(v, *inputs),
                bf16=bf16.apply(v, *inputs),
                train=f32.apply(v, *inputs, train=True, rngs={"dropout": key}))

  return run, params


@pytest.mark.slow
def test_dropout_only_in_train_mode(tiny_forward):
  run, params = tiny_forward
  a, b, c = (run(params, jax.random.key(s)) for s in (1, 1, 2))
  np.testing.assert_array_equal(a["train"], b["train"])  # the 'dropout' rng decides
  assert np.abs(a["train"] - c["train"]).max() > 1e-3
  assert np.abs(a["train"] - a["eval"]).max() > 1e-3
  np.testing.assert_array_equal(a["eval"], a["plain"])  # eval mode ignores the rate


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32(tiny_forward):
  run, params = tiny_forward
  out = run(params, jax.random.key(1))
  assert out["bf16"].dtype == jnp.float32 and out["eval"].dtype == jnp.float32
  ref, diff = np.asarray(out["eval"]), np.asarray(out["bf16"]) - np.asarray(out["eval"])
  rms_rel = np.sqrt(np.mean(diff ** 2) / np.mean(ref ** 2))
  print(f"bfloat16 vs float32: rms rel {rms_rel:.3g}, max abs {np.abs(diff).max():.3g}")
  assert 0 < rms_rel < 0.03  # > 0: the blocks really ran in bfloat16
  assert np.abs(diff).max() < 0.05 * np.abs(ref).max()
  jaxpr = str(jax.make_jaxpr(_tiny_unet(dtype=jnp.bfloat16).apply)(
      {"params": params}, TINY_X, TINY_T, TINY_Y))
  assert "bf16[2,8,8,32]" in jaxpr  # activations of the first level
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_fresh_model_outputs_exactly_zero(fresh):
  params, out = fresh
  assert out.shape == (2, 8, 8, 6) and out.dtype == np.float32
  assert np.all(out == 0)
  assert any(np.abs(np.asarray(p)).max() > 0 for p in jax.tree.leaves(params))


def test_init_matches_pytorch_defaults(fresh):
  """Zero modules are zero; conv/linear weights and biases ~ U(+-1/sqrt(fan_in));
  GroupNorm is the identity; the label table ~ N(0, 1)."""
  params, _ = fresh
  checked = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [k.key for k in path]
    module, kind = names[-2], names[-1]
    w = np.asarray(leaf)
    if module in ZERO_INIT_MODULES:
      assert np.all(w == 0), names
    elif kind == "scale":
      assert np.all(w == 1), names
    elif kind == "embedding":
      assert abs(w.std() - 1) < 0.15 and abs(w.mean()) < 0.15, names
    elif module.startswith(("in_layers_0", "out_layers_0", "norm", "out_0")):
      assert kind == "bias" and np.all(w == 0), names
    else:
      kernel = params
      for k in names[:-1]:
        kernel = kernel[k]
      fan_in = int(np.prod(kernel["kernel"].shape[:-1]))
      bound = 1 / math.sqrt(fan_in)
      assert np.abs(w).max() <= bound, names
      if w.size >= 4096:  # large enough for the statistics to be tight
        assert np.abs(w).max() > 0.97 * bound, names
        assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.05, names
        checked += 1
  assert checked >= 5


def test_unet_from_config_default_and_tiny():
  model = _unet128()
  assert model.attention_resolutions == (2, 4)
  assert model.out_channels == 6 and model.num_classes is None
  assert model.channel_mult == (1, 2, 2, 2) and model.num_heads == 4
  assert model.dropout == 0.3 and model.use_scale_shift_norm and model.dtype == jnp.float32
  tiny = default.get_config("tiny")
  tiny.model.compute_dtype = "bfloat16"
  tiny.model.num_classes = 2
  model = unet_from_config(tiny.model, tiny.data.image_size)
  assert model.attention_resolutions == (2,) and model.dtype == jnp.bfloat16
  assert model.num_classes == 2


@pytest.mark.parametrize("key,value,match", [
    ("attention_resolutions", (16, 3), "never reaches"),
    ("attention_resolutions", (2,), "never reaches"),
    ("model_channels", 48, "divisible by the 32 GroupNorm"),
    ("num_heads", 3, "num_heads=3"),
    ("compute_dtype", "float64", "compute_dtype"),
    ("channel_mult", (1, 2, 2, 2, 2, 2, 2), "not divisible by 2"),
])
def test_unet_from_config_rejects_impossible_settings(key, value, match):
  cfg = default.get_config()
  cfg.model[key] = value
  with pytest.raises(ValueError, match=match):
    unet_from_config(cfg.model, cfg.data.image_size)


def test_unet_rejects_bad_labels_and_sizes():
  model = UNet(model_channels=32, out_channels=3, num_res_blocks=1, channel_mult=(1, 2),
               num_classes=None)
  x, t = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,))
  with pytest.raises(ValueError, match="unconditional"):
    jax.eval_shape(model.init, jax.random.key(0), x, t, jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match="not divisible"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 7, 7, 3)), t)
  with pytest.raises(ValueError, match="no labels"):
    jax.eval_shape(model.clone(num_classes=4).init, jax.random.key(0), x, t)


def test_variants_without_conv_resample_or_scale_shift():
  """conv_resample=False pools/repeats without convs; without scale-shift norm
  the embedding projection has out_channels (not 2x) outputs."""
  model = UNet(model_channels=32, out_channels=3, num_res_blocks=1, channel_mult=(1, 2, 2),
               conv_resample=False, use_scale_shift_norm=False, attention_resolutions=(4,))
  x, t = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,))
  params = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]
  assert "input_blocks_2_0" not in params and "input_blocks_4_0" not in params  # Downsample
  assert "qkv" in params["output_blocks_1_1"]  # attention at the lowest level
  assert "output_blocks_1_2" not in params  # its Upsample has no conv
  assert "input_blocks_5_1" in params and "middle_block_1" in params
  assert "input_blocks_3_1" not in params
  assert params["input_blocks_3_0"]["emb_layers_1"]["kernel"].shape == (128, 64)
  out = jax.eval_shape(model.apply, {"params": params}, x, t)
  assert out.shape == (1, 16, 16, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(2, 4, 4, 32), (3, 8, 6, 64), (2, 5, 5, 128)])
def test_groupnorm32_matches_a_float64_grouped_reference(shape):
  """GroupNorm32 sums per channel and folds rstd into the scale (a layout for
  XLA:CPU); the result must still be PyTorch's GroupNorm: two-pass group
  statistics over (H, W, C/32), then the per-channel affine. Also the input
  gradient, which the layout change alters most."""
  rng = np.random.default_rng(sum(shape))
  x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
  bias = rng.normal(size=shape[-1]).astype(np.float32)
  cot = rng.normal(size=shape).astype(np.float32)
  params = {"params": {"scale": scale, "bias": bias}}

  def reference(x64):
    n, c = x64.shape[0], x64.shape[-1]
    g = x64.reshape(n, -1, 32, c // 32)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    normed = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x64.shape)
    return normed * scale.astype(np.float64) + bias.astype(np.float64)

  module = GroupNorm32()
  y, vjp = jax.vjp(lambda a: module.apply(params, a), jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), reference(x.astype(np.float64)), rtol=0, atol=2e-5)
  # Central differences of <reference(x), cot> in float64, at a few inputs.
  (dx,) = vjp(jnp.asarray(cot))
  flat = np.asarray(dx).reshape(-1)
  for i in rng.choice(flat.size, 5, replace=False):
    step = np.zeros(x.size)
    step[i] = 1e-4
    x64 = x.astype(np.float64).reshape(-1)
    up = np.sum(reference((x64 + step).reshape(shape)) * cot)
    down = np.sum(reference((x64 - step).reshape(shape)) * cot)
    assert abs(flat[i] - (up - down) / 2e-4) < 1e-3 * (1 + abs(flat[i])), i
