"""Shared builder for the experiment configs, so each file is a few lines.

Config arguments are comma-separated tokens (`--config=configs/x.py:tiny`,
`configs/capacity.py:1000,tiny`). Every file accepts `tiny`; files that take
more say so in their docstring. Tokens are either bare words or `key=value`.
"""

from __future__ import annotations

from typing import Iterable

import ml_collections

from configs import default

# Class-conditional models see label 0 for the original class (cars, Mondrian)
# and label 1 for dummy images. Cars-only runs (extra cars are still cars) are
# unconditional, as in the study.
_UNCONDITIONAL_DUMMY = ("", "cars")


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
      accepted = sorted({"tiny"} | words | {f"{k}=..." for k in keys}
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
  tiny, _ = parse_arg(arg, f"configs/{name}.py")
  return build(name, tiny, dataset=dataset, num_original=num_original,
               dummy_kind=dummy_kind, num_dummy=num_dummy)


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
