"""The capacity search: bisection logic exactly, and one real micro search."""

import json
import os

import pytest

from mem_diffusion.experiments import capacity
from mem_diffusion import errors


@pytest.mark.parametrize("true_capacity", [16, 17, 40, 200, 1023])
def test_bisection_brackets_the_last_true_size_within_the_resolution(true_capacity):
  calls = []

  def memorizes(n):
    calls.append(n)
    return n <= true_capacity

  a, b = capacity.bisect_last(memorizes, 16, 1024, 1.25)
  assert a <= true_capacity < b and b <= a * 1.25 or b - a == 1
  assert len(set(calls)) == len(calls)  # no size is run twice
  assert len(calls) <= 12  # geometric: log2(log(64)/log(1.25)) + 1


def test_bad_search_arguments_are_config_errors(tmp_path):
  for kwargs in ({"lo": 64, "hi": 16}, {"lo": 1, "hi": 16}):
    with pytest.raises(errors.ConfigError):
      capacity.search("configs/toy_capacity.py:tiny", str(tmp_path), seeds=[0], **kwargs)
  with pytest.raises(errors.ConfigError, match="resolution"):
    capacity.search("configs/toy_capacity.py:tiny", str(tmp_path), lo=4, hi=8, seeds=[0],
                    resolution=1.0)


@pytest.mark.slow
def test_micro_search_writes_points_and_numbers(tmp_path):
  """Two sizes of a 30-step toy: whichever way the ratios fall, the result is consistent."""
  micro = ["training.num_steps=30", "diffusion.steps=20", "sampling.respacing=10",
           "sampling.num_samples=16", "sampling.batch_size=16", "eval.num_heldout=16",
           "eval.blend_k=0"]
  root = str(tmp_path / "cap")
  result = capacity.search("configs/toy_capacity.py:tiny", root, lo=4, hi=5, seeds=[0],
                           overrides=micro)
  ratios = {p["n"]: p["replicate_ratio"] for p in result["points"]}
  assert sorted(ratios) == [4, 5]
  if ratios[4] < 0.9:
    assert result["capacity"] == {"below": 4}
  elif ratios[5] >= 0.9:
    assert result["capacity"] == {"above": 5}
  else:
    assert result["capacity"] == {"largest_n_at_or_above_high": 4, "smallest_n_below_high": 5}
  with open(os.path.join(root, "capacity.json")) as f:
    saved = json.load(f)
  assert saved["capacity"] == result["capacity"] and len(saved["points"]) == 2
  assert os.path.getsize(os.path.join(root, "capacity.png")) > 5000
  assert os.path.exists(os.path.join(root, "n4", "seed0", "eval", "report.json"))
  # A rerun reuses the finished runs (the stage runner skips them).
  again = capacity.search("configs/toy_capacity.py:tiny", root, lo=4, hi=5, seeds=[0],
                          overrides=micro)
  assert [p["replicate_ratio"] for p in again["points"]] == [ratios[4], ratios[5]]
