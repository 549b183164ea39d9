"""The sweep's table columns for the two replicate ratios (no training here)."""

import pytest

from mem_diffusion import sweep


def _config():
  config = sweep.load_config("configs/toy_capacity.py:16")
  config.seed = 0
  return config


def test_row_aggregate_and_table_carry_both_ratios():
  config = _config()
  reports = [{"replicate_ratio": 0.25, "replicate_ci95": [0.1, 0.4],
              "replicate_ratio_dedup": 0.5, "replicate_ci95_dedup": [0.3, 0.7]},
             {"replicate_ratio": 0.75, "replicate_ci95": [0.6, 0.9],
              "replicate_ratio_dedup": 0.75, "replicate_ci95_dedup": [0.6, 0.9]}]
  rows = [sweep.row("spec", config, s, "/w", r) for s, r in enumerate(reports)]
  assert set(sweep.COLUMNS) == set(rows[0])
  assert (rows[0]["replicate_ratio"], rows[0]["replicate_ratio_dedup"]) == (0.25, 0.5)
  assert (rows[0]["replicate_dedup_ci_low"], rows[0]["replicate_dedup_ci_high"]) == (0.3, 0.7)
  (agg,) = sweep.aggregate(rows)
  assert agg["ratio_mean"] == pytest.approx(0.5) and agg["ratio_std"] == pytest.approx(0.25)
  assert agg["ratios_dedup"] == [0.5, 0.75]
  assert agg["ratio_dedup_mean"] == pytest.approx(0.625)
  assert agg["ratio_dedup_std"] == pytest.approx(0.125)
  header, _, line = sweep.markdown_table([agg]).splitlines()
  cells = [c.strip() for c in line.strip("|").split("|")]
  names = [c.strip() for c in header.strip("|").split("|")]
  assert cells[names.index("replicate ratio (mean ± std)")] == "0.500 ± 0.250"
  assert cells[names.index("dedup ratio (mean ± std)")] == "0.625 ± 0.125"


def test_reports_without_the_dedup_ratio_show_a_dash():
  row = sweep.row("spec", _config(), 0, "/w", {"replicate_ratio": 0.5})
  assert row["replicate_ratio_dedup"] is None and row["replicate_dedup_ci_low"] is None
  (agg,) = sweep.aggregate([row])
  assert agg["ratio_dedup_mean"] is None
  header, _, line = sweep.markdown_table([agg]).splitlines()
  names = [c.strip() for c in header.strip("|").split("|")]
  assert [c.strip() for c in line.strip("|").split("|")][
      names.index("dedup ratio (mean ± std)")] == "-"
