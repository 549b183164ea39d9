"""Shared builder for the experiment configs, so each file is a few lines.

Config arguments are comma-separated tokens (`--config=configs/x.py:tiny`,
`configs/capacity.py:1000,tiny`). Every file accepts `tiny` and `bf16`;
files that take more say so in their docstring. Tokens are either bare words
or `key=value`.

`bf16` sets `model.compute_dtype = 'bfloat16'` (float32 stays the default, as
in IDDPM) and appends `_bf16` to the run's name, so a bfloat16 run never
shares a workdir or a sweep row with its float32 twin. It is applied by the
`precision_arg` decorator on every file's get_config, not by each file, so a
new config cannot forget it (tests/test_configs_toy.py checks every file).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import ml_collections

from configs import default

# Class-conditional models see label 0 for the original class (cars, Mondrian)
# and label 1 for dummy images. Cars-only runs (extra cars are still cars) are
# unconditional, as in the study.
_UNCONDITIONAL_DUMMY = ("", "cars")

# Bare words every config file takes, whatever else it accepts.
COMMON_WORDS = ("tiny", "bf16")
PRECISIONS = {"bf16": "bfloat16"}


def precision_arg(get_config: Callable[[str], ml_collections.ConfigDict]
                  ) -> Callable[[str], ml_collections.ConfigDict]:
  """Wraps a file's get_config so that it takes `bf16` among its tokens."""
  @functools.wraps(get_config)
  def wrapped(arg: str = "") -> ml_collections.ConfigDict:
    tokens = [t.strip() for t in (arg or "").split(",")]
    chosen = [t for t in tokens if t in PRECISIONS]
    config = get_config(",".join(t for t in tokens if t and t not in PRECISIONS))
    if chosen:
      config.model.compute_dtype = PRECISIONS[chosen[-1]]
      config.name += "_" + chosen[-1]
    return config
  return wrapped


def parse_arg(arg: str, file: str, words: Iterable[str] = (),
              keys: Iterable[str] = (), positional: str | None = None
              ) -> tuple[bool, dict[str, str]]:
  """Splits 'tiny,1000,x=y' into (tiny, {key: value}).

  `words`: accepted bare words besides 'tiny' (returned as {word: ''});
  `keys`: accepted `key=value` names; `positional`: the key a bare integer
  token stands for. Anything else raises ValueError naming the file.
  """
  words, keys = set(words), set(keys)
  tiny, out = False, {}
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if token == "tiny":
      tiny = True
    elif token in words:
      out[token] = ""
    elif "=" in token and token.split("=", 1)[0] in keys:
      k, v = token.split("=", 1)
      out[k] = v
    elif positional and token.isdigit():
      out[positional] = token
    else:
      accepted = sorted(set(COMMON_WORDS) | words | {f"{k}=..." for k in keys}
                        | ({"<integer>"} if positional else set()))
      raise ValueError(f"{file}: unknown config argument {token!r} in {arg!r} "
                       f"(accepted, comma-separated: {', '.join(accepted)})")
  return tiny, out


def experiment(name: str, arg: str, *, dataset: str = "cifar_cars",
               num_original: int = 2000, dummy_kind: str = "",
               num_dummy: int = 0) -> ml_collections.ConfigDict:
  """The default IDDPM config with the experiment's train set.

  Dummy kinds other than 'cars' make the model class-conditional
  (model.num_classes = 2, label 0 = original class, 1 = dummy); sampling
  then draws the original class (sampling.label = 0).
  """
  def get_config(rest: str) -> ml_collections.ConfigDict:
    tiny, _ = parse_arg(rest, f"configs/{name}.py")
    return build(name, tiny, dataset=dataset, num_original=num_original,
                 dummy_kind=dummy_kind, num_dummy=num_dummy)
  return precision_arg(get_config)(arg)


def build(name: str, tiny: bool, *, dataset: str, num_original: int,
          dummy_kind: str = "", num_dummy: int = 0,
          conditional: bool | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.name = name
  config.data.dataset = dataset
  config.data.num_original = num_original
  config.data.dummy_kind = dummy_kind
  config.data.num_dummy = num_dummy
  if conditional is None:
    conditional = dummy_kind not in _UNCONDITIONAL_DUMMY
  config.model.num_classes = 2 if conditional else 0
  config.sampling.label = 0
  if tiny:
    default.apply_tiny(config)
  return config
