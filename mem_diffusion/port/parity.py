"""Checks this port against arrays computed by the PyTorch reference.

    python -m mem_diffusion.parity FILE.npz [FILE.npz ...]

The file format: docs/reference.md#golden-files. Each file is read on its own:
UNet files (`out`, `x`, `t_model`, `config_json`, `param/*`) and diffusion
files (`base/*`, `respace/*`, `xt`, `pmv/*`, `loss/*`, `spaced/*`, with the
network in `model_config_json` + `param/*`) are told apart by their keys,
and the model and diffusion are rebuilt from the file's own configuration.
Every array the file holds is compared and printed on one line with its max
absolute and relative error; keys that are not understood are printed as
SKIP. Exit status: 0 all pass, 1 a comparison failed or a file had nothing
to compare, 2 a file could not be read or its configuration is unusable.

Tolerances (elementwise, an element passes on either bound):
  float64 schedule arrays: rel 1e-5 (abs 1e-12 for exact zeros);
  float32 arrays (network-derived and the rest): abs 1e-4 or rel 1e-3;
    for pred_xstart, the means and the DDIM step the abs bound is multiplied
    by how much the formula amplifies a difference in the network output
    (up to 8e4 at t = T-1 of a 4000-step cosine chain; see
    `parity_compare.eps_gain`);
  integer arrays (respacings): exact, same length.
Tensors are NCHW in the file, NHWC in the model.
"""

import functools
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mem_diffusion import npz_io
from mem_diffusion.port import convert
from mem_diffusion import diffusion as diff_lib
from mem_diffusion.diffusion import samplers
from mem_diffusion.port.parity_compare import Result, compare, eps_gain

# File arrays that are inputs, not results.
_INPUT_KEYS = {"x", "t_model", "y", "x0", "noise", "t", "config_json",
               "model_config_json", "spaced/spacing", "spaced/t"}
_DIFFUSION_PREFIXES = ("base/", "respace/", "pmv/", "loss/", "spaced/")


class ParityError(Exception):
  """A file that cannot be checked (unreadable, or a configuration we cannot build)."""


# ---- building things from the file ---------------------------------------------


def _json(data, key) -> Dict[str, Any]:
  try:
    return json.loads(str(data[key][()]))
  except (ValueError, TypeError) as e:
    raise ParityError(f"{key} is not valid JSON: {e}") from None


def build_model(kwargs: Dict[str, Any]):
  """The Flax UNet for the reference UNetModel constructor arguments."""
  try:
    return convert.unet_from_torch_kwargs(kwargs)
  except (TypeError, ValueError) as e:
    raise ParityError(f"cannot build the UNet from the file's config: {e}") from None


def build_params(data, model):
  """Converts the file's `param/*` state_dict with mem_diffusion.port.convert."""
  state = {k[len("param/"):]: np.asarray(data[k]) for k in data.files if k.startswith("param/")}
  if not state:
    raise ParityError("no param/* arrays: the network cannot be rebuilt")
  try:
    params = convert.torch_state_dict_to_flax(state, model)
  except (KeyError, ValueError) as e:
    raise ParityError(f"cannot convert param/*: {e}") from None
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  return params


@functools.lru_cache(maxsize=8)
def _jitted_apply(model):
  return jax.jit(lambda params, x, t, y: model.apply({"params": params}, x, t, y))


def make_apply(model, params, y) -> Callable:
  """A jitted model_fn(x_nhwc, t_model) with params and labels bound.

  Compiled once per model configuration (modules compare by their fields).
  """
  use_y = y if model.num_classes else None
  apply = _jitted_apply(model)
  return lambda x, t: apply(params, x, t, use_y)


def _nhwc(a):
  a = np.asarray(a)
  return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


def _nchw(a):
  a = np.asarray(a)
  return np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a


_LOSS_NAMES = {"hybrid": ("hybrid", 1), "rescaled_mse": ("hybrid", 1), "mse": ("mse", 1),
               "kl": ("kl", 1), "rescaled_kl": ("kl", "T")}


def _loss_type(cfg) -> tuple:
  """Maps the file's loss description to (our loss type, extra factor)."""
  if cfg.get("use_kl"):
    return ("kl", "T")
  raw = str(cfg.get("loss", "hybrid")).strip().lower()
  head = raw.split()[0] if raw else "hybrid"
  if head not in _LOSS_NAMES:
    raise ParityError(f"unknown loss {raw!r} in config_json")
  return _LOSS_NAMES[head]


# ---- the checks --------------------------------------------------------------------


def check_unet(data) -> List[Result]:
  # A diffusion file keeps the network's config in model_config_json.
  cfg_key = "model_config_json" if "model_config_json" in data.files else "config_json"
  model = build_model(_json(data, cfg_key))
  params = build_params(data, model)
  y = jnp.asarray(data["y"]) if "y" in data.files else None
  if model.num_classes and y is None:
    raise ParityError("class-conditional model config but no `y` in the file")
  fn = make_apply(model, params, y)
  out = fn(jnp.asarray(_nhwc(data["x"])), jnp.asarray(data["t_model"], jnp.float32))
  return [compare("out", _nchw(out), data["out"])]


def check_diffusion(data, handled: set) -> List[Result]:
  keys = set(data.files)
  cfg = _json(data, "config_json")
  if "steps" not in cfg or "schedule" not in cfg:
    raise ParityError("config_json needs 'steps' and 'schedule'")
  steps = int(cfg["steps"])
  loss_type, loss_factor = _loss_type(cfg)
  model_cfg = _json(data, "model_config_json") if "model_config_json" in keys else None
  learn_sigma = cfg.get("learn_sigma")
  if learn_sigma is None:
    learn_sigma = bool(model_cfg and model_cfg.get("out_channels") == 2 * model_cfg.get("in_channels", 3))
  try:
    base = diff_lib.make_diffusion(
        diff_lib.get_betas(cfg["schedule"], steps),
        mean_type="xstart" if cfg.get("predict_xstart") else "epsilon",
        var_type="learned_range" if learn_sigma else
        ("fixed_small" if cfg.get("sigma_small") else "fixed_large"),
        loss_type=loss_type, rescale_timesteps=cfg.get("rescale_timesteps", True))
  except ValueError as e:
    raise ParityError(str(e)) from None
  results = []

  def record(name, got, tol=None, gain=None):
    handled.add(name)
    results.append(compare(name, got, data[name], tol, gain))

  for k in sorted(keys):
    if k.startswith("base/") and _is_schedule_attr(base, k[5:]):
      record(k, getattr(base, k[5:]))
    elif k.startswith("respace/"):
      try:
        kept = diff_lib.space_timesteps(steps, k[len("respace/"):])
      except ValueError as e:
        handled.add(k)
        results.append(Result(k, float("nan"), float("nan"), False, f"raised: {e}"))
        continue
      record(k, np.asarray(kept, np.int64))

  has = lambda *names: all(n in keys for n in names)
  x0 = jnp.asarray(_nhwc(data["x0"])) if "x0" in keys else None
  noise = jnp.asarray(_nhwc(data["noise"])) if "noise" in keys else None
  if has("x0", "t", "noise", "xt"):
    record("xt", _nchw(base.q_sample(x0, jnp.asarray(data["t"]), noise)))

  needs_model = any(k.startswith(("pmv/", "loss/", "spaced/pmv_")) or k == "spaced/ddim_sample"
                    for k in keys)
  model_fn = None
  if needs_model:
    if model_cfg is None:
      raise ParityError("pmv/loss arrays need model_config_json and param/*")
    model = build_model(model_cfg)
    y = jnp.asarray(data["y"]) if "y" in keys else None
    if model.num_classes and y is None:
      raise ParityError("class-conditional model config but no `y` in the file")
    out_ch = model.out_channels
    if out_ch != (2 if learn_sigma else 1) * model.in_channels:
      raise ParityError(f"model out_channels={out_ch} does not fit learn_sigma={learn_sigma}")
    model_fn = make_apply(model, build_params(data, model), y)

  if model_fn is not None and has("t", "xt") and any(k.startswith("pmv/") for k in keys):
    pmv = _pmv(base, model_fn, jnp.asarray(_nhwc(data["xt"])), jnp.asarray(data["t"]))
    for name, val in pmv.items():
      if "pmv/" + name in keys:
        record("pmv/" + name, _nchw(val), gain=eps_gain(base, name, data["t"]))
  if model_fn is not None and has("x0", "t", "noise") and any(k.startswith("loss/") for k in keys):
    t = jnp.asarray(data["t"])
    output = model_fn(jax.jit(base.q_sample)(x0, t, noise), base.model_timesteps(t))
    # training_losses itself, with the network's output precomputed (same
    # inputs: it recomputes the same x_t), so only the loss math is compiled.
    losses = jax.jit(lambda out, x0, t, noise: base.training_losses(
        lambda x, tm: out, x0, t, noise))(output, x0, t, noise)
    for name, val in losses.items():
      if "loss/" + name in keys:
        factor = steps if loss_factor == "T" and name in ("loss", "vb") else 1
        record("loss/" + name, np.asarray(val) * factor)

  spaced_keys = [k for k in keys if k.startswith("spaced/")]
  if spaced_keys:
    spec = _spacing(data, cfg, steps)
    try:
      spaced = base.respaced(diff_lib.space_timesteps(steps, spec))
    except ValueError as e:
      raise ParityError(f"spaced/spacing {spec!r}: {e}") from None
    for k in sorted(spaced_keys):
      if _is_schedule_attr(spaced, k[7:]):
        record(k, getattr(spaced, k[7:]))
    if "spaced/timestep_map" in keys:
      record("spaced/timestep_map", spaced.timestep_map)
    st = jnp.asarray(data["spaced/t"]) if "spaced/t" in keys else None
    if st is not None and has("x0", "noise", "spaced/xt"):
      record("spaced/xt", _nchw(spaced.q_sample(x0, st, noise)))
    if st is not None and "spaced/xt" in keys and model_fn is not None:
      sxt = jnp.asarray(_nhwc(data["spaced/xt"]))
      if any(k.startswith("spaced/pmv_") for k in keys):
        pmv = _pmv(spaced, model_fn, sxt, st)
        for name, val in pmv.items():
          if "spaced/pmv_" + name in keys:
            record("spaced/pmv_" + name, _nchw(val), gain=eps_gain(spaced, name, data["spaced/t"]))
      if "spaced/ddim_sample" in keys:
        output = model_fn(sxt, spaced.model_timesteps(st))
        step = jax.jit(lambda out, x, t: samplers.ddim_step(
            spaced, lambda xx, tm: out, x, t, eta=0.0, clip_denoised=True))
        record("spaced/ddim_sample", _nchw(step(output, sxt, st)),
               gain=eps_gain(spaced, "ddim", data["spaced/t"]))
  return results


def _pmv(diffusion, model_fn, x, t):
  """p_mean_variance(clip_denoised=True): network once, the rest one jitted call."""
  output = model_fn(x, diffusion.model_timesteps(t))
  return jax.jit(lambda out, x, t: diffusion.p_mean_variance(
      lambda xx, tm: out, x, t, clip_denoised=True))(output, x, t)


def _is_schedule_attr(diffusion, name: str) -> bool:
  value = getattr(diffusion, name, None)
  return isinstance(value, np.ndarray) and value.dtype == np.float64


def _spacing(data, cfg, steps) -> str:
  """The respacing of `spaced/*`: spaced/spacing, else the one config spec of that length."""
  if "spaced/spacing" in data.files:
    return str(data["spaced/spacing"][()])
  n = data["spaced/betas"].shape[0] if "spaced/betas" in data.files else None
  matches = [s for s in cfg.get("spacings", [])
             if n is not None and len(diff_lib.space_timesteps(steps, s)) == n]
  if len(matches) != 1:
    raise ParityError("spaced/* arrays without spaced/spacing, and no unique spec in config_json fits")
  return matches[0]


def check_file(path: str) -> List[Result]:
  """All comparisons for one file; raises ParityError if it cannot be checked.

  The file is read as every npz input is (npz_io.read_npz): a FIFO would
  block np.load forever, and a header declaring terabytes would allocate them.
  """
  try:
    data = _Arrays(npz_io.read_npz(path))
  except (OSError, ValueError) as e:
    raise ParityError(f"cannot read: {e}") from None
  keys = set(data.files)
  results: List[Result] = []
  handled = set()
  if "config_json" not in keys:
    raise ParityError("no config_json: the model/diffusion cannot be rebuilt")
  if {"out", "x", "t_model"} <= keys:  # a UNet forward pass
    results += check_unet(data)
    handled.add("out")
  if any(k.startswith(_DIFFUSION_PREFIXES) for k in keys) or "xt" in keys:
    results += check_diffusion(data, handled)
  for k in sorted(keys - handled - _INPUT_KEYS):
    if not k.startswith("param/"):
      results.append(Result(k, float("nan"), float("nan"), True, "SKIP (not understood)"))
  return results


class _Arrays(dict):
  """read_npz's arrays, named as the checks name np.load's NpzFile's (`.files`)."""

  @property
  def files(self) -> List[str]:
    return list(self)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  usage = "usage: python -m mem_diffusion.parity FILE.npz [FILE.npz ...]"
  if argv in (["-h"], ["--help"]):
    print(usage)
    return 0
  options = [a for a in argv if a.startswith("-")]  # it takes none; a typo is not a file name
  if not argv or options:
    print(f"error: {f'unknown option {options[0]}' if options else 'no input files'} ({usage})",
          file=sys.stderr)
    return 2
  # GPUs default to TF32 and TPUs to bf16 matmuls: far outside 1e-4.
  jax.config.update("jax_default_matmul_precision", "highest")
  status = 0
  for path in argv:
    try:
      results = check_file(path)
    except ParityError as e:
      print(f"{path}: ERROR {e}")
      status = 2
      continue
    compared = [r for r in results if not r.note.startswith("SKIP")]
    for r in results:
      if r.note.startswith("SKIP"):
        print(f"{path}:{r.name:<40} {r.note}")
      else:
        verdict = "PASS" if r.ok else "FAIL"
        extra = f"  ({r.note})" if r.note else ""
        print(f"{path}:{r.name:<40} max_abs={r.max_abs:.3e} max_rel={r.max_rel:.3e} {verdict}{extra}")
    if not compared:
      print(f"{path}: FAIL nothing to compare")
      status = max(status, 1)
    elif not all(r.ok for r in compared):
      status = max(status, 1)
  return status


if __name__ == "__main__":
  sys.exit(main())
