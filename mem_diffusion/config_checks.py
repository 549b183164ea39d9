"""Table-driven limits on config values, shared by every component's rules.

Each component (data, models, diffusion, the training/sampling/eval stages)
lists its keys as `Limit`s and checks its own section with `check_section`;
mem_diffusion.validate only runs them and adds the rules that span sections.
A limit's `why` is part of the error message, so a user who hits a bound
learns what it protects; docs/reliability.md ("Config limits") lists them all.

This module imports nothing heavy: validating must not start JAX work or load
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from mem_diffusion.errors import ConfigError

# jax.random.key keeps only the low 32 bits of a seed unless jax_enable_x64 is
# set (key(2**32) == key(0)), so larger seeds would silently repeat smaller ones.
MAX_SEED = 2**32 - 1
SEED_WHY = "JAX keys keep only 32 bits: seed 2**32 would repeat seed 0"


@dataclasses.dataclass(frozen=True)
class Limit:
  """The allowed values of one key: an integer/real range or a set of choices.

  `each`: the key holds a tuple and the limit applies to every element.
  """
  key: str
  kind: type  # int, float or str
  lo: float | None = None
  hi: float | None = None
  open_lo: bool = False
  open_hi: bool = False
  choices: tuple[Any, ...] = ()
  each: bool = False
  why: str = ""

  def allowed(self) -> str:
    """The bound as the docs and error messages write it."""
    if self.choices:
      text = "one of " + ", ".join(repr(c) for c in self.choices)
    elif self.kind is int:
      hi = "" if self.hi is None else _fmt(self.hi)
      text = f"an integer in {_fmt(self.lo)}..{hi}" if hi else f"an integer >= {_fmt(self.lo)}"
    else:
      text = (f"a finite number in {'(' if self.open_lo else '['}{_fmt(self.lo)}, "
              f"{_fmt(self.hi)}{')' if self.open_hi else ']'}")
    return ("each " + text) if self.each else text

  def ok(self, value: Any) -> bool:
    if self.each:
      return isinstance(value, (tuple, list)) and all(self._ok_one(v) for v in value)
    return self._ok_one(value)

  def _ok_one(self, v: Any) -> bool:
    if self.choices:
      return isinstance(v, self.kind) and v in self.choices
    if isinstance(v, bool):
      return False
    if self.kind is int:
      if not isinstance(v, int):
        return False
    elif not (isinstance(v, (int, float)) and math.isfinite(v)):
      return False
    if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
      return False
    if self.hi is not None and (v >= self.hi if self.open_hi else v > self.hi):
      return False
    return True

  def check(self, value: Any) -> None:
    if not self.ok(value):
      why = f" ({self.why})" if self.why else ""
      raise ConfigError(f"{self.key}={value!r}: expected {self.allowed()}{why}")


def _fmt(x: float | None) -> str:
  if x is None:
    return ""
  if isinstance(x, float) and x.is_integer() and abs(x) < 1e6:
    return str(int(x))
  if isinstance(x, int) and x >= 10**5:
    return f"{x:_}"
  return repr(x)


def int_in(key: str, lo: int, hi: int | None, why: str = "", *, each: bool = False) -> Limit:
  return Limit(key, int, lo, hi, each=each, why=why)


def real_in(key: str, lo: float, hi: float, why: str = "", *, open_lo: bool = False,
            open_hi: bool = False) -> Limit:
  return Limit(key, float, lo, hi, open_lo=open_lo, open_hi=open_hi, why=why)


def one_of(key: str, choices: Iterable[Any], why: str = "") -> Limit:
  choices = tuple(choices)
  return Limit(key, type(choices[0]), choices=choices, why=why)


def check_section(limits: Sequence[Limit], section: Any) -> None:
  """Applies `limits` (keys 'section.name') to one config section."""
  for limit in limits:
    name = limit.key.rpartition(".")[2]
    try:
      value = section[name]
    except (KeyError, AttributeError):
      raise ConfigError(f"{limit.key} is missing from the config") from None
    limit.check(value)


def require(ok: bool, message: str) -> None:
  """Raises ConfigError(message) unless `ok`; message names the key first."""
  if not ok:
    raise ConfigError(message)
