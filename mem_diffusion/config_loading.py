"""Loading config files, `key=value` overrides, and the config schema.

The only place in mem_diffusion that reads the repository's configs/ folder:
the CLIs (convert, sweep) load experiment files through `load_config`, and
validation gets the schema (every key with its default and type) from
configs/default.py through `schema`. Every failure is a one-line ConfigError.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import sys
from typing import Any, Mapping

import ml_collections

from mem_diffusion.errors import ConfigError

# The checkout that holds both mem_diffusion/ and configs/.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_FILE = os.path.join(REPO_ROOT, "configs", "default.py")

_module_ids = itertools.count()


def flatten(config: Mapping[str, Any] | ml_collections.ConfigDict,
            prefix: str = "") -> dict[str, Any]:
  """{'training.batch_size': 128, ...}, tuples/lists as lists (JSON-like)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  out = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, (tuple, list)) else v
  return out


def _last_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'path/to/file.py[:arg]' -> get_config(arg), as ml_collections' config flags.

  The file's repository root goes on sys.path first, so that experiment files
  can `from configs import default` from any working directory.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found")
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if repo_root not in sys.path:
    sys.path.insert(0, repo_root)
  # A fresh module name per load: two files (or one file twice, after an
  # edit) never share module state.
  name = f"_mem_diffusion_config_{next(_module_ids)}"
  try:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path!r} failed to import ({_last_line(e)})") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path!r} defines no get_config() function")
  try:
    config = get_config(arg) if arg else get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{path}: get_config({arg!r}) failed ({_last_line(e)})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config({arg!r}) returned {type(config).__name__}, "
                      "not an ml_collections.ConfigDict")
  return config


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """'a.b=value' with the value parsed to the type of the existing key."""
  key, sep, raw = assignment.partition("=")
  if not sep:
    raise ConfigError(f"--set {assignment!r}: expected key=value")
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise ConfigError(f"--set {assignment!r}: no config section {p!r}")
    node = node[p]
  if leaf not in node:
    raise ConfigError(f"--set {assignment!r}: unknown config key {key!r}")
  old = node[leaf]
  try:
    if isinstance(old, bool):
      if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(raw)
      value: Any = raw.lower() in ("1", "true", "yes")
    elif isinstance(old, int):
      value = int(raw)
    elif isinstance(old, float):
      value = float(raw)
    elif isinstance(old, tuple):
      kind = type(old[0]) if old else int
      value = tuple(kind(v) for v in raw.split(",") if v)
    else:
      value = raw
  except ValueError:
    raise ConfigError(f"--set {assignment!r}: {raw!r} is not a valid {type(old).__name__} "
                      f"for {key}") from None
  node[leaf] = value


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's get_config(): every key a config may hold."""
  if not os.path.isfile(SCHEMA_FILE):
    raise ConfigError(f"the config schema {SCHEMA_FILE} is missing: configs are checked "
                      "against it; run from a full checkout of the repository")
  try:
    return load_config(SCHEMA_FILE)
  except ConfigError as e:
    raise ConfigError(f"the config schema cannot be loaded: {e}") from None


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
  """The flattened default config (cached: validation runs several times per run)."""
  return flatten(default_config())
