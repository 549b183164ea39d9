"""The study's aggregate, groups, figures and tables on synthetic summary rows."""

import pytest

from mem_diffusion import report
from mem_diffusion.experiments import presets
from mem_diffusion.experiments import study


def fake(name, seed, ratio, *, n=24, kind="none", m=0, sampling="uniform", steps=2000,
         batch=16, d1=1.5, per_class=None, counts=None, dataset="mondrian", cond=None,
         mask=None, scale=None):
  """A summary row as rows.row writes it (only the fields the study reads).

  cond/mask/scale None: a row of a sweep from before those fields existed.
  """
  return {"name": name, "seed": seed, "dataset": dataset, "dummy_kind": kind, "num_dummy": m,
          "num_original": n, "sampling": sampling, "conditional": kind != "none" or bool(cond),
          "conditioning": cond, "hybrid_mask": mask, "loss_scale": scale,
          "draws_per_original": steps * batch / (n + m),
          "replicate_ratio_originals": ratio / 2 if m else ratio,
          "num_steps": steps, "batch_size": batch, "class_counts": counts,
          "replicate_ratio": ratio, "replicate_ci_low": max(ratio - 0.1, 0),
          "replicate_ci_high": min(ratio + 0.1, 1), "replicate_ratio_dedup": ratio,
          "d1_median_ratio": d1, "frac_below_heldout_p05": 0.2, "frechet": 2.0,
          "frechet_heldout_split": 1.0, "kid": 0.1, "kid_heldout_split": 0.01,
          "per_class": per_class}


def three_seeds(name, ratios, **kw):
  return [fake(name, s, r, d1=1.0 + r, **kw) for s, r in enumerate(ratios)]


@pytest.fixture(scope="module")
def agg():
  rows = []
  for n, rs in ((8, (1.0, 0.9, 0.95)), (24, (0.8, 0.6, 0.7)), (36, (0.5, 0.3, 0.4)),
                (48, (0.2, 0.1, 0.3))):
    rows += three_seeds(f"cap{n}", rs, n=n)
  rows += three_seeds("cap8_s1000", (0.6, 0.5, 0.4), n=8, steps=1000)
  rows += three_seeds("cap24_s1000", (0.1, 0.0, 0.2), n=24, steps=1000)
  # The conditioning control: no dummies, a two-label model, label 0 for all.
  for n, r in ((24, 0.95), (36, 0.85), (48, 0.75)):
    rows += three_seeds(f"cap{n}c", (r, r, r), n=n, cond="one label")
  rows += three_seeds("cap24r", (0.9, 0.8, 0.7), n=24, cond="random labels")  # one point: no line
  for kind, mask in (("gm", None), ("hybrid", "bin_fraction"), ("hybrid", "corner_radius")):
    tag = kind + ("c" if mask == "corner_radius" else "")
    rows += three_seeds(f"{tag}12", (0.7, 0.6, 0.5), kind=kind, m=12, mask=mask)
    rows += three_seeds(f"{tag}24", (0.6, 0.5, 0.4), kind=kind, m=24, mask=mask)
  rows += three_seeds("gm40", (0.3, 0.2, 0.1), kind="gm", m=40)
  rows += three_seeds("gm40b", (0.7, 0.7, 0.7), kind="gm", m=40, sampling="balanced", batch=32,
                      scale=2.0)
  rows += three_seeds("gm160b", (0.6, 0.5, 0.7), kind="gm", m=160, sampling="balanced",
                      batch=32, scale=2.0)
  dummy = {"0": {"ratio": 0.3, "ci95": [0.2, 0.4]},
           "1 (dummy label)": {"ratio": 0.05, "ci95": [0.0, 0.1]}}
  rows += [fake("gm48d", s, 0.3, kind="gm", m=48, per_class=dummy) for s in range(2)]
  pc = lambda a, b: {"0": {"ratio": a, "ci95": [a / 2, a]}, "1": {"ratio": b, "ci95": [0, b]}}
  rows += [fake("mm", s, 0.4, n=16, dataset="mondrian_classes", counts="16/240",
                per_class=pc(a, b)) for s, (a, b) in enumerate(((0.7, 0.1), (0.9, 0.0)))]
  return study.aggregate(rows)


def _by_name(agg, name):
  return next(e for e in agg if e["name"] == name)


def test_aggregate_has_mean_std_min_max_and_each_runs_interval(agg):
  e = _by_name(agg, "cap24")
  assert e["seeds"] == [0, 1, 2] and e["ratios"] == [0.8, 0.6, 0.7]
  assert e["ratio_mean"] == pytest.approx(0.7)
  assert e["conditioning"] == "unconditional" and e["loss_scale"] == 1.0  # old rows
  assert e["ratio_std"] == pytest.approx((0.02 / 2) ** 0.5)  # sample std: n - 1
  assert (e["ratio_min"], e["ratio_max"]) == (0.6, 0.8)
  assert e["ratio_ci95"][0] == [pytest.approx(0.7), pytest.approx(0.9)]
  assert e["d1_median_ratio_min"] == pytest.approx(1.6)
  mm = _by_name(agg, "mm")
  assert mm["per_class"]["0"]["ratios"] == [0.7, 0.9]
  assert mm["per_class"]["0"]["ratio_mean"] == pytest.approx(0.8)
  assert mm["per_class"]["1"]["ratio_max"] == 0.1
  assert _by_name(agg, "cap24")["per_class"] == {}


def _xs(series, label):
  return [(x, e["name"]) for x, e in series[label]]


def test_capacity_lines_per_budget(agg):
  cap = study.capacity_series(agg)
  # The two-population run is not a line, nor is one random-label point.
  assert sorted(cap) == ["1000 steps, unconditional", "2000 steps, one label",
                         "2000 steps, unconditional"]
  assert _xs(cap, "2000 steps, unconditional") == [(8, "cap8"), (24, "cap24"), (36, "cap36"),
                                                   (48, "cap48")]
  assert _xs(cap, "2000 steps, one label") == [(24, "cap24c"), (36, "cap36c"), (48, "cap48c")]
  assert _xs(cap, "1000 steps, unconditional") == [(8, "cap8_s1000"), (24, "cap24_s1000")]


def test_seed_figure_lines(agg):
  seed = study.seed_series(agg)
  assert sorted(seed) == ["gm", "hybrid (bin_fraction)", "hybrid (corner_radius)",
                          "more mondrian, one label", "more mondrian, unconditional"]
  # x = 0 is the conditional one-label run (dummy runs are conditional);
  # M = 40 (not 0.5/1/2 x N) and balanced runs stay out.
  assert _xs(seed, "gm") == [(0, "cap24c"), (12, "gm12"), (24, "gm24"), (48, "gm48d")]
  assert _xs(seed, "hybrid (corner_radius)") == [(0, "cap24c"), (12, "hybridc12"),
                                                 (24, "hybridc24")]
  assert _xs(seed, "more mondrian, one label") == [(0, "cap24c"), (12, "cap36c"), (24, "cap48c")]
  assert _xs(seed, "more mondrian, unconditional") == [(0, "cap24"), (12, "cap36"), (24, "cap48")]


def test_seed_figure_of_an_old_sweep_starts_at_the_unconditional_run():
  rows = three_seeds("cap24", (0.8, 0.6, 0.7)) + three_seeds("gm12", (0.5,) * 3, kind="gm", m=12)
  assert _xs(study.seed_series(study.aggregate(rows)), "gm") == [(0, "cap24"), (12, "gm12")]


def test_dummies_fill_lines(agg):
  fill = study.fill_series(agg)
  assert sorted(fill) == ["balanced (batch 32, loss x2)", "uniform (batch 16)"]
  assert _xs(fill, "uniform (batch 16)") == [(0, "cap24c"), (12, "gm12"), (24, "gm24"),
                                             (40, "gm40"), (48, "gm48d")]
  assert _xs(fill, "balanced (batch 32, loss x2)") == [(0, "cap24c"), (40, "gm40b"),
                                                       (160, "gm160b")]


def test_figures_draw_min_max_bars(agg, tmp_path, monkeypatch):
  drawn = {}
  save = report._save_figure  # pylint: disable=protected-access

  def capture(fig, path, **kw):
    ax = fig.axes[0]
    drawn[path] = {c.get_label(): c for c in ax.containers}
    drawn[path] = {label: [seg[:, 1].tolist() for seg in c.lines[2][0].get_segments()]
                   for label, c in drawn[path].items()}
    save(fig, path, **kw)

  monkeypatch.setattr(report, "_save_figure", capture)
  paths = study.write_figures(agg, str(tmp_path))
  assert [p.rsplit("/", 1)[1] for p in paths] == ["capacity.png", "seed_figure.png",
                                                  "dummies_fill.png"]
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  bars = drawn[str(tmp_path / "capacity.png")]["2000 steps, unconditional"]
  assert bars == [pytest.approx(b) for b in ([0.9, 1.0], [0.6, 0.8], [0.3, 0.5], [0.1, 0.3])]
  more = drawn[str(tmp_path / "seed_figure.png")]["more mondrian, unconditional"]
  assert more == [pytest.approx(b) for b in ([0.6, 0.8], [0.3, 0.5], [0.1, 0.3])]


def test_no_figure_without_its_runs(tmp_path):
  agg = study.aggregate(three_seeds("only", (0.5, 0.5, 0.5)))
  assert study.write_figures(agg, str(tmp_path)) == []
  assert "## All runs" in study.markdown(agg) and "## Capacity" not in study.markdown(agg)


def test_markdown_tables(agg):
  md = study.markdown(agg)
  for title in ("## Capacity", "## The seed's figure", "## Dummies fill", "## Per class",
                "## All runs"):
    assert md.count(title) == 1, title
  assert "sample standard deviation" in md and "not a bound" in md
  cap24 = next(l for l in md.splitlines() if l.startswith("| 2000 steps, unconditional | 24 |"))
  assert "0.700 ± 0.100 (0.600-0.800)" in cap24  # sample std of 0.8, 0.6, 0.7
  assert "s0: 0.80 [0.70, 0.90]; s1: 0.60 [0.50, 0.70]; s2: 0.70 [0.60, 0.80]" in cap24
  assert "| 1333 |" in cap24  # draws per real image: 2000 x 16 / 24
  minority = next(l for l in md.splitlines() if l.startswith("| mm | 16/240 | 0 |"))
  assert "0.800 ± 0.141 (0.700-0.900)" in minority and "s1: 0.90 [0.45, 0.90]" in minority
  gm12 = next(l for l in md.splitlines() if l.startswith("| gm | 12 |"))
  assert "| 0.300 ± 0.050 (0.250-0.350) | 889 |" in gm12  # originals only; 32000 / 36 draws
  dummy = next(l for l in md.splitlines() if l.startswith("| gm48d | - | 1 (dummy label) |"))
  assert "0.050 ± 0.000 (0.050-0.050)" in dummy
  gm160b = next(l for l in md.splitlines() if l.startswith("| gm160b |"))
  assert "| balanced | class labels | 2000 | 32 (loss x2) |" in gm160b


def test_one_seed_has_no_std():
  agg = study.aggregate([fake("one", 0, 0.5)])
  assert agg[0]["ratio_std"] is None
  assert study.cell(agg[0], "ratio") == "0.500 (0.500-0.500)"


def test_toy_preset_covers_every_figure():
  preset = presets.PRESETS["toy"]
  specs = preset.specs
  assert len(set(specs)) == len(specs)
  assert set(preset.close) <= set(specs)
  for n in (16, 24, 36, 48, 72, 120, 240):  # the seed's "more" line needs 24 + M
    assert f"configs/toy_capacity.py:n={n}" in specs
  for cond in ("one", "random"):  # the conditioning control: the same line, conditional
    for n in (24, 36, 48, 72):
      assert f"configs/toy_capacity.py:n={n},cond={cond}" in specs
  assert sum(s.endswith("steps=1000") for s in specs) == 6
  for m in (12, 24, 48):  # both readings of the hybrid cutoff
    assert f"configs/toy_dummies.py:kind=hybrid,m={m},n=24" in specs
    assert f"configs/toy_dummies.py:kind=hybrid,m={m},n=24,mask=corner_radius" in specs
  # fill: balanced arm keeping the real class's draws and weight, 2 sizes x 2 kinds
  for kind in ("gm", "geometric"):
    for n in (24, 48):
      assert (f"configs/toy_dummies.py:kind={kind},m=640,n={n},"
              "sampling=balanced,batch=32,loss_scale=2") in specs
  assert "configs/toy_dummies.py:kind=gm,m=640,n=24" in specs
  assert "configs/toy_minority_majority.py:minority=8,majority=96" in preset.close
  assert "eval.every_steps=0" in preset.overrides


def test_close_points_run_five_seeds():
  preset = presets.Preset(("a.py", "b.py"), close=("b.py",))
  assert preset.seeds_by_spec([0, 1, 2]) == {"b.py": [0, 1, 2, 3, 4]}
  assert preset.seeds_by_spec([3]) == {"b.py": [3, 4, 5, 6, 7]}
  assert preset.seeds_by_spec(list(range(6))) == {"b.py": list(range(6))}


def test_one_class_runs_have_no_per_class_table():
  one = {"0": {"ratio": 0.5, "ci95": [0.4, 0.6]}}
  agg = study.aggregate([fake("c", 0, 0.5, per_class=one)])
  assert agg[0]["per_class"]["0"]["ratio_mean"] == 0.5
  assert "## Per class" not in study.markdown(agg)


def test_switch_is_read_the_same_way_everywhere(agg):
  assert study.crossing([(8, 1.0), (24, 0.8), (48, 0.0)], 0.9) == pytest.approx(16)
  assert study.crossing([(8, 1.0), (24, 0.8), (48, 0.0)], 0.1) == pytest.approx(45)
  assert study.crossing([(8, 0.5), (24, 0.4)], 0.1) is None
  # A dip under the level and back (seed noise) is not the switch: the last drop is.
  assert study.crossing([(16, 0.99), (24, 0.89), (36, 0.95), (48, 0.85)], 0.9) == pytest.approx(
      36 + 0.05 / 0.10 * 12)
  lines = study.switch_lines(study.capacity_series(agg))
  # 2000 steps: 0.95 at 8, 0.7 at 24 -> 0.9 at 11.2; 0.3 at 36, 0.2 at 48 -> never 0.1
  assert "- 2000 steps, unconditional: the mean ratio crosses 0.9 at N = 11 and 0.1 at N = -" \
      in "\n".join(lines)
