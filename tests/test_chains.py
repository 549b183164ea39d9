"""Chain sensitivity: one trained micro model scored under two chains, resumably."""

import json
import os

import pytest

from mem_diffusion.experiments import chains
from mem_diffusion import errors
from mem_diffusion.config import apply_override, load_config

MICRO = ("training.num_steps=30", "diffusion.steps=20", "sampling.respacing=10",
         "sampling.num_samples=16",
         "sampling.batch_size=16", "eval.num_heldout=16", "eval.blend_k=0")


def test_parse_chains():
  assert chains.parse_chains("full,50,ddim25") == ["", "50", "ddim25"]
  with pytest.raises(errors.ConfigError):
    chains.parse_chains("50,50")


@pytest.mark.slow
def test_two_chains_score_the_same_params(tmp_path, monkeypatch):
  config = load_config("configs/toy_capacity.py:8,tiny")
  for o in MICRO:
    apply_override(config, o)
  workdir = str(tmp_path / "w")
  rows = chains.compare(config, workdir, ["", "ddim10"])
  assert [r["chain"] for r in rows] == ["full", "ddim10"]
  assert all(r["num_samples"] == 16 and 0.0 <= r["replicate_ratio"] <= 1.0 for r in rows)
  out = os.path.join(workdir, "chains")
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  assert summary["params"]["step"] == 30 and len(summary["rows"]) == 2
  with open(os.path.join(out, "summary.md")) as f:
    lines = f.read().splitlines()
  assert [l.split("|")[1].strip() for l in lines[2:]] == ["full", "ddim10"]
  # Both chains sampled from the exported EMA params, not from a checkpoint.
  for name in ("full", "ddim10"):
    with open(os.path.join(out, name, "samples", "record.json")) as f:
      source = json.load(f)["fingerprint"]["source"]
    assert source["params_file"] == os.path.join(os.path.abspath(out), "params.msgpack")

  # A chain longer than the diffusion is refused before anything runs.
  with pytest.raises(errors.ConfigError, match="respacing"):
    chains.compare(config, workdir, ["50"])

  # A rerun reuses every finished piece.
  from mem_diffusion.run import sampling, train  # pylint: disable=g-import-not-at-top,g-multiple-import

  def refuse(*args, **kwargs):
    raise AssertionError("a finished chain was redone")

  monkeypatch.setattr(train, "train_and_evaluate", refuse)
  monkeypatch.setattr(sampling, "sample_to_workdir", refuse)
  again = chains.compare(config, workdir, ["", "ddim10"])
  assert [r["replicate_ratio"] for r in again] == [r["replicate_ratio"] for r in rows]
