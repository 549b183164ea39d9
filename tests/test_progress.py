"""Progress lines: periodic compact lines in logs, a live bar on a terminal."""

import io
import re

from mem_diffusion.run import progress


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _run(total, stream, seconds_per_step=0.5, **kwargs):
  clock = _Clock()
  p = progress.Progress(total, label="train", unit="step", items_per_unit=8,
                        stream=stream, clock=clock, **kwargs)
  for step in range(1, total + 1):
    clock.now += seconds_per_step
    p.update(step, loss=0.25, skipped=None)
  return p


def test_log_file_gets_a_line_per_ten_percent_with_eta():
  stream = io.StringIO()  # not a TTY: plain lines only
  _run(200, stream)
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  steps = [int(re.search(r"step (\d+)/200 ", l).group(1)) for l in lines]
  # The first step (rate unknown), then every 20 steps (10% of 200), then the end.
  assert steps == [1] + list(range(20, 201, 20)), steps
  assert lines[0] == "train  step 1/200 (0%)  loss 0.25"
  # 2 steps/s of 8 images; 180 steps left at step 20 take 90 s.
  assert lines[1] == "train  step 20/200 (10%)  loss 0.25  16 images/s  ETA 1m30s"
  assert "skipped" not in stream.getvalue()
  assert lines[-1].startswith("train  step 200/200 (100%)")
  assert "ETA" not in lines[-1] and lines[-1].endswith("took 1m40s")


def test_slow_runs_also_print_every_few_minutes():
  stream = io.StringIO()
  _run(10_000, stream, seconds_per_step=10.0, every_seconds=60.0, live=False)
  lines = stream.getvalue().splitlines()
  # 5% is 500 steps (83 min) here: a line every 60 s (6 steps) instead.
  steps = [int(re.search(r"step (\d+)/", l).group(1)) for l in lines]
  assert steps[:4] == [1, 7, 13, 19], steps[:4]
  assert lines[1].endswith("ETA 1d03h")  # 9,993 steps of 10 s


def test_terminal_gets_a_live_bar_between_lines():
  stream = _Terminal()
  p = _run(40, stream, refresh_seconds=0.0, every_fraction=0.05)
  p.say("resumed at step 0")
  text = stream.getvalue()
  chunks = text.split("\r")
  bars = [c for c in chunks if c.startswith("train  [")]
  assert bars, text
  assert "step 3/40 (8%)" in bars[0] and bars[0].endswith("16 images/s  ETA 18s")
  assert not any("\n" in b for b in bars)  # redrawn in place
  # A permanent line overwrites the bar fully (padded), then ends the line.
  line = next(c for c in chunks if c.startswith("train  step 4/40"))
  assert line.rstrip(" \n").endswith("ETA 18s") and line.endswith("  \n"), line
  assert chunks[-1].rstrip().endswith("resumed at step 0") and text.endswith("\n")


def test_end_closes_a_bar_left_on_screen():
  stream = _Terminal()
  clock = _Clock()
  with progress.Progress(1000, label="sample", unit="chunk", stream=stream,
                         clock=clock, refresh_seconds=0.0) as p:
    for done in (1, 2, 3):
      clock.now += 1.0
      p.update(done)
    assert not stream.getvalue().endswith("\n")  # a bar is on screen
    assert "chunk 3/1000 (0%)  1 chunks/s" in stream.getvalue()
  assert stream.getvalue().endswith("\n")


def test_due_says_when_the_next_update_prints():
  clock = _Clock()
  p = progress.Progress(100, label="train", stream=io.StringIO(), clock=clock)
  assert p.due(1)  # the first update always prints
  p.update(1)
  assert not p.due(2) and not p.due(9) and p.due(10) and p.due(100)
  clock.now += 301.0  # every_seconds (300) passed
  assert p.due(2)


def test_disabled_progress_writes_nothing():
  stream = io.StringIO()
  p = _run(20, stream, enabled=False)
  p.say("hello")
  assert stream.getvalue() == ""


def test_format_duration():
  assert [progress.format_duration(s) for s in (0.4, 59, 61, 3600 * 5 + 125, 86400 * 2 + 7200)
          ] == ["0s", "59s", "1m01s", "5h02m", "2d02h"]
