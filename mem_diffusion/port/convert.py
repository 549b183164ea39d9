"""improved-diffusion (PyTorch) state_dict <-> Flax params of `models.UNet`.

The Flax tree mirrors the PyTorch module paths: a numeric path component is
glued to the one before it with '_' (`input_blocks.3.1.qkv.weight` ->
`input_blocks_3_1/qkv/kernel`). Only the array layout changes:
  conv weight  (O, I, kh, kw) -> (kh, kw, I, O)
  attention 1-D conv weight (O, I, 1) -> (1, 1, I, O)
  linear weight (out, in) -> (in, out)
  GroupNorm weight -> scale, embedding table unchanged.
Conversion is strict: every state_dict entry must be used and every Flax
parameter filled with the right shape, otherwise a ValueError lists them all.

CLI (converts a released checkpoint into a params file the sampler loads):
  python -m mem_diffusion.convert IN.pt|IN.npz OUT.msgpack --config configs/default.py[:arg]
"""

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

import flax.serialization
import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from mem_diffusion.config import load_config
from mem_diffusion import files, npz_io
from mem_diffusion import errors
from mem_diffusion.errors import InputError
from mem_diffusion.models import UNet, unet_from_config
from mem_diffusion.run import cli

Params = Dict[str, Any]
_FLAX_TO_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight",
                       "bias": "bias"}
_ATTENTION_1D_CONVS = ("qkv", "proj_out")
_MAX_LISTED = 20  # names per category in an error message
_INPUT = "input file"  # what the CLI's messages (`convert: <path>: ...`) call it


def _torch_prefix(flax_modules: Tuple[str, ...]) -> str:
  """('input_blocks_3_1', 'qkv') -> 'input_blocks.3.1.qkv'."""
  parts = []
  for name in flax_modules:
    pieces = name.split("_")
    k = len(pieces)
    while k > 1 and pieces[k - 1].isdigit():
      k -= 1
    parts.append("_".join(pieces[:k]))
    parts.extend(pieces[k:])
  return ".".join(parts)


def _flat_params(params: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
  flat = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      flat.update(_flat_params(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _torch_name(path: Tuple[str, ...]) -> str:
  return f"{_torch_prefix(path[:-1])}.{_FLAX_TO_TORCH_LEAF[path[-1]]}"


def _to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if leaf == "kernel" and array.ndim == 3:
    return array.transpose(2, 1, 0)[None]
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  return array


def _to_torch_layout(array: np.ndarray, path: Tuple[str, ...]) -> np.ndarray:
  if path[-1] != "kernel":
    return array
  if array.ndim == 4 and path[-2] in _ATTENTION_1D_CONVS:
    return array[0].transpose(2, 1, 0)
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  return array.T


def abstract_params(model: UNet) -> Params:
  """The model's parameter shapes (jax.ShapeDtypeStruct), without computing."""
  size = 2 ** (len(model.channel_mult) - 1)
  x = jnp.zeros((1, size, size, model.in_channels), jnp.float32)
  t = jnp.zeros((1,), jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
  return jax.eval_shape(model.init, jax.random.key(0), x, t, y)["params"]


def torch_state_dict_to_flax(state_dict: Mapping[str, np.ndarray], model: UNet) -> Params:
  """PyTorch names -> nested Flax params (float32 numpy) for `model`."""
  expected = {_torch_name(path): (path, leaf.shape)
              for path, leaf in _flat_params(abstract_params(model)).items()}
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected))
  params: Params = {}
  wrong_shape = []
  bad_values = []
  for name, (path, shape) in expected.items():
    if name not in state_dict:
      continue
    raw = np.asarray(state_dict[name])
    # Integer or string "weights" mean a wrong file, not a model to cast;
    # NaN/inf weights would only show up as NaN samples hours later.
    if raw.dtype.kind != "f" and raw.dtype.name != "bfloat16":
      bad_values.append(f"{name}: dtype {raw.dtype}, expected floating point")
      continue
    if not np.all(np.isfinite(raw.astype(np.float32))):
      bad_values.append(f"{name}: non-finite values (NaN or inf)")
      continue
    array = _to_flax_layout(raw.astype(np.float32), path[-1])
    if array.shape != tuple(shape):
      wrong_shape.append(f"{name}: {np.shape(state_dict[name])} gives {array.shape}, "
                         f"model needs {tuple(shape)}")
      continue
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = array
  if missing or unexpected or wrong_shape or bad_values:
    lines = ["state_dict does not fit the model:"]
    for title, items, sep in (("missing", missing, ", "), ("unexpected", unexpected, ", "),
                              ("wrong shape", wrong_shape, "; "),
                              ("bad values", bad_values, "; ")):
      if items:
        more = f"{sep}... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
        lines.append(f"  {title} ({len(items)}): {sep.join(items[:_MAX_LISTED])}{more}")
    if "label_emb.weight" in unexpected:
      lines.append("  (the checkpoint is class-conditional: set model.num_classes)")
    if "label_emb.weight" in missing:
      lines.append("  (the checkpoint is unconditional: set model.num_classes = 0)")
    raise ValueError("\n".join(lines))
  return params


def flax_to_torch_state_dict(params: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """The inverse of `torch_state_dict_to_flax` (PyTorch names and layouts)."""
  return {_torch_name(path): _to_torch_layout(np.asarray(leaf), path)
          for path, leaf in _flat_params(params).items()}


_REFERENCE_KWARGS = ("in_channels", "model_channels", "out_channels", "num_res_blocks",
                     "attention_resolutions", "dropout", "channel_mult", "conv_resample",
                     "num_classes", "num_heads", "use_scale_shift_norm")


def unet_from_torch_kwargs(kwargs: Mapping[str, Any], dtype: Any = jnp.float32) -> UNet:
  """A UNet from improved-diffusion's UNetModel constructor arguments (as in
  the golden files' config_json; attention_resolutions are downsample rates)."""
  kwargs = dict(kwargs)
  if kwargs.pop("dims", 2) != 2:
    raise ValueError("UNetModel dims != 2 is not supported (images only)")
  kwargs.pop("use_checkpoint", None)  # gradient checkpointing: no effect on values
  heads_up = kwargs.pop("num_heads_upsample", -1)
  if heads_up not in (-1, kwargs.get("num_heads", 1)):
    raise ValueError(f"num_heads_upsample={heads_up} different from num_heads is not supported")
  unknown = sorted(set(kwargs) - set(_REFERENCE_KWARGS))
  if unknown:
    raise ValueError(f"unknown UNetModel arguments: {unknown}")
  for key in ("attention_resolutions", "channel_mult"):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  return UNet(**kwargs, dtype=dtype)


def load_params(path: str, name: Optional[str] = None) -> Params:
  """Reads a params file written by this module's CLI.

  The file must be a regular file within the input memory budget
  (`files.max_input_bytes()`); msgpack itself then allocates no more than
  the file holds.

  Raises:
    InputError: one line saying what the file is instead (missing, a device,
      empty, truncated, zero-filled, not msgpack, not a mapping of arrays).
  """
  name = name or path
  data = files.read_input_bytes(path, name)
  if not data:
    raise InputError(f"{name}: empty file (0 bytes), not a params file; write one "
                     "with python -m mem_diffusion.convert")
  try:
    params = flax.serialization.msgpack_restore(data)
  except msgpack.exceptions.ExtraData:
    what = ("zero-filled" if not data.strip(b"\0") else
            "not a msgpack params file (data continues after the first value)")
    raise InputError(f"{name}: {what} ({len(data):,} bytes)") from None
  except (ValueError, TypeError, msgpack.exceptions.UnpackException) as e:
    if "incomplete input" in str(e):
      raise InputError(f"{name}: truncated: its msgpack data ends early after "
                       f"{len(data):,} bytes; copy or convert it again") from None
    raise InputError(f"{name}: not a msgpack params file ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if not isinstance(params, Mapping) or not params:
    raise InputError(f"{name}: holds {type(params).__name__} {str(params)[:40]!r}, not a "
                     "mapping of parameter arrays")
  return params


def check_params_fit(params: Mapping[str, Any], model: UNet, name: str) -> None:
  """Raises InputError unless `params` has exactly `model`'s names and shapes.

  A params file of another model would otherwise fail deep inside the first
  jitted call with a traceback about some module.
  """
  expected = {"/".join(p): tuple(v.shape) for p, v in _flat_params(abstract_params(model)).items()}
  found = {"/".join(p): tuple(np.shape(v)) for p, v in _flat_params(params).items()}
  problems = [f"missing {k}" for k in sorted(set(expected) - set(found))]
  problems += [f"unexpected {k}" for k in sorted(set(found) - set(expected))]
  problems += [f"{k} has shape {found[k]}, the model needs {expected[k]}"
               for k in sorted(set(found) & set(expected)) if found[k] != expected[k]]
  if problems:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise InputError(f"{name}: not params of the configured model: "
                     f"{'; '.join(problems[:3])}{more}")


def save_params(params: Params, path: str) -> None:
  files.write_bytes(path, flax.serialization.msgpack_serialize(params))


def _read_pt(path: str) -> Dict[str, np.ndarray]:
  # Checked before torch is imported: a device or FIFO must not be opened,
  # and a file over the budget not read, whether or not torch is installed.
  size = files.check_input_file(path, _INPUT).st_size
  files.check_budget(size, _INPUT, "the file's size")
  try:
    import torch  # pylint: disable=g-import-not-at-top  # torch is optional
  except ImportError:
    raise ValueError("reading a .pt checkpoint needs PyTorch (pip install torch); "
                     "or convert it to an .npz of 'param/<name>' arrays") from None
  try:
    # mmap: the tensors stay in the page cache instead of a second copy in
    # memory; only zip-format files (torch >= 1.6) support it.
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except RuntimeError as e:
    if "mmap" not in str(e):
      raise
    obj = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise ValueError(f"{path} is not a state_dict (a mapping of names to tensors)")
  return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}


def _read_npz(path: str) -> Tuple[Dict[str, np.ndarray], Optional[Dict[str, Any]]]:
  """The state_dict and UNetModel kwargs of a golden-format file. Diffusion
  files keep the model's kwargs under model_config_json."""
  try:
    data = npz_io.read_npz(path, name=_INPUT)
  except npz_io.NpzError as e:
    raise InputError(f"not a readable .npz file ({e.problem})") from None
  state = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
  cfg_key = next((k for k in ("model_config_json", "config_json") if k in data), None)
  cfg = json.loads(str(data[cfg_key])) if cfg_key else None
  if not state:
    raise ValueError(f"{path} holds no 'param/<name>' arrays")
  return state, cfg


def convert_file(in_path: str, out_path: str, config_spec: Optional[str] = None) -> Params:
  """Reads a checkpoint, builds the model, converts and writes params."""
  files.check_input_file(in_path, _INPUT)
  files.check_output_path(out_path, "output")
  file_cfg = None
  if in_path.endswith(".npz"):
    state, file_cfg = _read_npz(in_path)
  else:
    state = _read_pt(in_path)
  if config_spec:
    config = load_config(config_spec)
    model = unet_from_config(config.model, config.data.image_size)
  elif file_cfg is not None:
    model = unet_from_torch_kwargs(file_cfg)
  else:
    raise ValueError("--config is required (the input file carries no config_json)")
  params = torch_state_dict_to_flax(state, model)
  save_params(params, out_path)
  return params


def main(argv: Optional[List[str]] = None) -> None:
  parser = cli.ArgumentParser(
      prog="python -m mem_diffusion.convert",
      description="Convert an improved-diffusion checkpoint (.pt state_dict, or .npz of "
                  "'param/<torch name>' arrays) into a Flax params msgpack file.")
  parser.add_argument("input", help="improved-diffusion .pt or .npz file")
  parser.add_argument("output", help="params file to write (.msgpack)")
  parser.add_argument("--config", default=None,
                      help="config file[:arg] whose model section and data.image_size define "
                           "the UNet (optional for .npz files with config_json)")
  args = parser.parse_args(argv)
  try:
    files.check_distinct({"input": args.input, "output": args.output})  # the input survives
    params = convert_file(args.input, args.output, args.config)
  except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
    # The input or a flag is wrong (2); only a refused write is the run failing (1).
    raise cli.Exit(f"convert: {args.input}: {e}",
                   1 if isinstance(e, errors.OutputError) else 2) from None
  except Exception as e:  # zip/pickle/torch errors: still one message, no traceback
    raise cli.Exit(f"convert: {args.input}: cannot read ({type(e).__name__}: {e})") from None
  count = sum(int(np.size(v)) for v in _flat_params(params).values())
  print(f"wrote {args.output}: {count:,} parameters")


if __name__ == "__main__":
  cli.run(main)
