"""The study's presets: named lists of config specs, their overrides, and
the specs that run five seeds.

`python -m mem_diffusion.sweep --preset=toy` runs one; the study module
(mem_diffusion/experiments/study.py) turns its rows into tables and figures,
reading groups from config fields, never from these spec strings.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

CLOSE_SEEDS = 5  # seeds of a preset's close points (Preset.close)


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named list of config specs and the overrides every run of it gets.

  `close`: the specs whose verdict is close at three seeds; they run
  CLOSE_SEEDS seeds, the given ones and the next after the largest.
  """
  specs: tuple[str, ...]
  overrides: tuple[str, ...] = ()
  close: tuple[str, ...] = ()

  def seeds_by_spec(self, seeds: Sequence[int]) -> dict[str, list[int]]:
    extra = range(max(seeds) + 1, max(seeds) + 1 + max(CLOSE_SEEDS - len(seeds), 0))
    return {spec: list(seeds) + list(extra) for spec in self.close}


_CAP = "configs/toy_capacity.py:n={}"
_DUMMIES = "configs/toy_dummies.py:kind={},m={},n={}"
_HYBRID_CORNER = "configs/toy_dummies.py:kind=hybrid,m={},n=24,mask=corner_radius"
# 'balanced' at batch 32 with the loss x2: the Mondrians keep the no-dummy
# run's 16 rows per step and 1/16 loss weight per row (configs/toy_dummies.py).
_KEEP_REAL = ",sampling=balanced,batch=32,loss_scale=2"
_MINORITY = ("configs/toy_minority_majority.py",
             "configs/toy_minority_majority.py:minority=8,majority=96")


def _toy_close() -> tuple[str, ...]:
  """Where three seeds left a verdict close (docs/results.md): the capacity
  points around the switch, the seed figure at its largest M and its
  conditional baseline, the uniform/balanced pair at 640 GM, both
  minority/majority runs."""
  return (*(_CAP.format(n) for n in (48, 72, 120)),
          _CAP.format(24) + ",cond=one", _CAP.format(72) + ",cond=one",
          *(_DUMMIES.format(k, 48, 24) for k in ("gm", "hybrid", "geometric")),
          _HYBRID_CORNER.format(48),
          _DUMMIES.format("gm", 640, 24), _DUMMIES.format("gm", 640, 24) + _KEEP_REAL,
          *_MINORITY)


def _toy_specs() -> tuple[str, ...]:
  """The study at toy scale, in groups (docs/results.md gives each one's cost).

  Base N = 24, under the toy capacity. The capacity curves (2,000 and 1,000
  steps, unconditional); the conditioning control (N = 24, 36, 48, 72 as
  class-conditional models with one label for all and with random labels
  over two classes: the dummy runs are conditional, so the seed's figure is
  drawn against these); the seed's figure (GM, hybrid under both readings of
  its cutoff, geometric at M = 12/24/48 beside N = 24); the fill test at
  640 dummies (uniform batches, and balanced ones that keep the real
  class's draws and weight, at N = 24 and 48 with GM and geometric
  dummies); the minority/majority runs. Close points run five seeds.
  """
  specs = [_CAP.format(n) for n in (16, 24, 36, 48, 72, 120, 240)]
  specs += [_CAP.format(n) + f",cond={c}" for c in ("one", "random") for n in (24, 36, 48, 72)]
  for m in (12, 24, 48):
    specs += [_DUMMIES.format(k, m, 24) for k in ("gm", "hybrid", "geometric")]
    specs += [_HYBRID_CORNER.format(m)]
  specs += [_DUMMIES.format("gm", 640, 24)]  # uniform; 48 is a seed-figure run
  specs += [_DUMMIES.format(k, 640, n) + _KEEP_REAL for k in ("gm", "geometric") for n in (24, 48)]
  specs += [_CAP.format(n) + ",steps=1000" for n in (4, 8, 16, 24, 48, 96)]
  # 16/240: 256 images, over the capacity as a whole; 8/96: 104 images, in the
  # switch, where a per-class difference can show (docs/results.md).
  specs += list(_MINORITY)
  return tuple(specs)


PRESETS = {
    # No over-training curve in the study: it costs 10% of every run.
    "toy": Preset(_toy_specs(), ("eval.every_steps=0",), _toy_close()),
}
