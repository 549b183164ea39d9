"""The sweep's table columns for the two replicate ratios (no training here)."""

import csv
import json

import pytest

from mem_diffusion.experiments import rows
from mem_diffusion.experiments import study
from mem_diffusion.experiments import sweep


def _config():
  config = sweep.load_config("configs/toy_capacity.py:16")
  config.seed = 0
  return config


def _all_runs_table(agg):
  """The header, rule and first row of summary.md's table of every run."""
  lines = study.markdown([agg]).splitlines()
  start = lines.index("## All runs") + 2
  return lines[start:start + 3]


def test_row_aggregate_and_table_carry_both_ratios():
  config = _config()
  reports = [{"replicate_ratio": 0.25, "replicate_ci95": [0.1, 0.4],
              "replicate_ratio_dedup": 0.5, "replicate_ci95_dedup": [0.3, 0.7]},
             {"replicate_ratio": 0.75, "replicate_ci95": [0.6, 0.9],
              "replicate_ratio_dedup": 0.75, "replicate_ci95_dedup": [0.6, 0.9]}]
  made = [rows.row("spec", config, s, "/w", r) for s, r in enumerate(reports)]
  assert set(rows.COLUMNS) == set(made[0])
  assert (made[0]["replicate_ratio"], made[0]["replicate_ratio_dedup"]) == (0.25, 0.5)
  assert (made[0]["replicate_dedup_ci_low"], made[0]["replicate_dedup_ci_high"]) == (0.3, 0.7)
  (agg,) = study.aggregate(made)
  assert agg["ratio_mean"] == pytest.approx(0.5) and agg["ratio_std"] == pytest.approx(0.125 ** 0.5)
  assert agg["ratios_dedup"] == [0.5, 0.75]
  assert agg["ratio_dedup_mean"] == pytest.approx(0.625)
  assert agg["ratio_dedup_std"] == pytest.approx(0.03125 ** 0.5)  # sample std (n - 1)
  header, _, line = _all_runs_table(agg)
  cells = [c.strip() for c in line.strip("|").split("|")]
  names = [c.strip() for c in header.strip("|").split("|")]
  assert cells[names.index("replicate ratio")] == "0.500 ± 0.354 (0.250-0.750)"
  assert cells[names.index("dedup ratio")] == "0.625 ± 0.177 (0.500-0.750)"


def test_reports_without_the_dedup_ratio_show_a_dash():
  row = rows.row("spec", _config(), 0, "/w", {"replicate_ratio": 0.5})
  assert row["replicate_ratio_dedup"] is None and row["replicate_dedup_ci_low"] is None
  (agg,) = study.aggregate([row])
  assert agg["ratio_dedup_mean"] is None
  header, _, line = _all_runs_table(agg)
  names = [c.strip() for c in header.strip("|").split("|")]
  assert [c.strip() for c in line.strip("|").split("|")][
      names.index("dedup ratio")] == "-"


def test_per_class_ratios_reach_the_row_and_the_csv(tmp_path):
  report = {"replicate_ratio": 0.5, "replicate_ci95": [0.3, 0.7],
            "per_class": {"0": {"replicate_ratio": 0.75, "replicate_ci95": [0.5, 0.9]},
                          "1": {"replicate_ratio": 0.25, "replicate_ci95": [0.1, 0.5]}}}
  row = rows.row("spec", _config(), 0, "/w", report)
  assert row["per_class"] == {"0": {"ratio": 0.75, "ci95": [0.5, 0.9]},
                              "1": {"ratio": 0.25, "ci95": [0.1, 0.5]}}
  assert (row["num_steps"], row["batch_size"], row["class_counts"]) == (2000, 16, None)
  sweep.write_outputs([row], str(tmp_path))
  with open(tmp_path / "summary.csv") as f:
    (line,) = csv.DictReader(f)
  assert json.loads(line["per_class"])["1"]["ratio"] == 0.25
  assert "| 1 | 0.250 (0.250-0.250) | s0: 0.25 [0.10, 0.50] |" in (
      tmp_path / "summary.md").read_text()
