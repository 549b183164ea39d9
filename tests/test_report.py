"""PNG grids and the evaluation plots (the JSON writer: tests/test_io_bounds.py)."""

import numpy as np
import pytest
from PIL import Image

from mem_diffusion import report


def test_image_grid_layout_and_png_round_trip(tmp_path):
  imgs = np.stack([np.full((4, 5, 3), 10 * i, np.uint8) for i in range(5)])
  grid = report.image_grid(imgs, ncols=3, pad=1)
  assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3) and grid.dtype == np.uint8
  assert (grid[1:5, 1:6] == 0).all() and (grid[6:10, 7:12] == 40).all()
  assert (grid[6:10, 13:18] == 255).all()  # empty cell stays padding
  report.save_png(str(tmp_path / "g.png"), grid)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
  with pytest.raises(ValueError):
    report.image_grid(imgs.astype(np.float32), 3)
  assert report.image_grid(imgs[:4], pad=0).shape == (8, 10, 3)  # default: square-ish
  with pytest.raises(TypeError, match="path"):
    report.save_png(grid, str(tmp_path / "x.png"))


def test_figures_are_written(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
  samples = train[:10]
  per = {"nn1": np.arange(10), "nn2": np.arange(10, 20), "d1": np.zeros(10),
         "d2": np.ones(10), "ratio": np.linspace(0, 1, 10), "rho": np.linspace(0, 1, 10),
         "is_replicate": np.arange(10) < 3, "is_blend": np.arange(10) == 5}
  paths = [tmp_path / n for n in ("nn.png", "h.png", "cdf.png", "line.png")]
  report.nearest_neighbors_figure(samples, train, per, str(paths[0]), num_each=2)
  report.ratio_histogram(per["ratio"], str(paths[1]), 1 / 3)
  report.distance_cdf_figure([("a", rng.random(50)), ("b", rng.random(40))], str(paths[2]))
  report.line_plot([1, 2, 4], {"gm": [0.5, 0.2, 0.1]}, str(paths[3]),
                   errors={"gm": [0.1, 0.05, 0.02]}, xlabel="dummy (k)", ylabel="replicates")
  for p in paths:
    im = Image.open(p)
    assert im.size[0] > 100 and im.size[1] > 100, p
  # 2 replicated + 1 blend + 2 random rows of three panels.
  assert Image.open(paths[0]).size[1] > Image.open(paths[1]).size[1]


def test_errorbar_figure_bars_and_the_zero_on_a_log_axis(tmp_path, monkeypatch):
  seen = {}
  save = report._save_figure  # pylint: disable=protected-access

  def capture(fig, path, **kw):
    ax = fig.axes[0]
    seen["ticks"] = [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels()]
    (bars,) = ax.containers
    seen["bars"] = [seg.tolist() for seg in bars.lines[2][0].get_segments()]
    save(fig, path, **kw)

  monkeypatch.setattr(report, "_save_figure", capture)
  panel = report.Panel("t", "ratio", {"gm": [(40, 0.5, 0.2, 0.6), (0, 0.9, 0.9, 1.0)]},
                       ylim=(0, 1), hline=0.5)
  report.errorbar_figure([panel, panel._replace(series={})], str(tmp_path / "f.png"),
                         xlabel="M", log_x=True)
  # x = 0 sits at half the smallest nonzero x, labelled 0; bars run low..high.
  assert seen["ticks"] == [(20.0, "0"), (40.0, "40")]
  assert seen["bars"] == [[[20.0, 0.9], [20.0, 1.0]], [[40.0, 0.2], [40.0, 0.6]]]
  assert Image.open(tmp_path / "f.png").size[0] > 500


def test_crowded_log_ticks_leave_the_right_label_blank():
  # 96 -> 120 is 0.32 octaves: 120's label would overprint 96's.
  xs = [4, 8, 16, 24, 36, 48, 72, 96, 120, 240]
  labels = report._spaced_log_labels(xs, xs)  # pylint: disable=protected-access
  assert labels == ["4", "8", "16", "24", "36", "48", "72", "96", "", "240"]
  assert report._spaced_log_labels([1, 2], [0, 2]) == ["0", "2"]  # pylint: disable=protected-access
