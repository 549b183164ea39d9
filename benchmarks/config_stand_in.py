"""What the GPU check needs of ml_collections, for images that lack it.

A bare accelerator image has JAX, flax, optax, orbax and PyTorch, but not
ml-collections, which the package's config and training modules import. The
check uses one fixed recipe (configs/default.py plus a few keys) that its CPU
test validates with the real library, and of a config the train step reads
attributes, `to_dict()` and copies: a dict with attribute access is enough.
So where `import ml_collections` fails, `install()` registers this stand-in
under that name (with an empty `config_flags`, which only the command-line
entry points use), for this process only, and the check records that it did.
Nothing else in the repository loads this module.
"""

from __future__ import annotations

import copy
import sys
import types
from typing import Any, Mapping


class ConfigDict(dict):
  """Attribute access over a dict; nested mappings become ConfigDicts."""

  def __init__(self, initial: Mapping[str, Any] | None = None, **_: Any):
    super().__init__()
    for key, value in dict(initial or {}).items():
      self[key] = value

  def __setitem__(self, key: str, value: Any) -> None:
    if isinstance(value, Mapping) and not isinstance(value, ConfigDict):
      value = ConfigDict(value)
    super().__setitem__(key, value)

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name: str, value: Any) -> None:
    self[name] = value

  def to_dict(self) -> dict[str, Any]:
    return {k: v.to_dict() if isinstance(v, ConfigDict) else v for k, v in self.items()}

  def copy_and_resolve_references(self) -> ConfigDict:
    return ConfigDict(copy.deepcopy(self.to_dict()))

  def lock(self) -> ConfigDict:
    return self

  def unlock(self) -> ConfigDict:
    return self


def install() -> str:
  """'ml_collections' when the library imports; else registers the stand-in."""
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top,unused-import
    return "ml_collections"
  except ImportError:
    pass
  package = types.ModuleType("ml_collections", __doc__)
  package.__path__ = []  # a package: `from ml_collections import config_flags` works
  package.ConfigDict = ConfigDict
  package.config_flags = types.ModuleType("ml_collections.config_flags")
  sys.modules["ml_collections"] = package
  sys.modules["ml_collections.config_flags"] = package.config_flags
  return "stand-in (benchmarks/config_stand_in.py)"
