"""What a long loop shows on the terminal: one compact line now and then.

Training, sampling and evaluation run for minutes to days; their detailed
numbers go to TensorBoard and JSON files, and the terminal (or a job's log
file) gets one short line per 10% of the work, or every few minutes when 10%
takes longer:

  train  step 2400/24000 (10%)  loss 0.0312  12.3 images/s  ETA 30m54s

When the stream is a terminal, a single live bar is also redrawn in place
(carriage return) between those lines, so one can watch a run without
flooding the scrollback. Lines go to stderr with print, not through absl
logging, so they show even when INFO logging is off.

Rates count from the first update, which in a training run comes after the
first (compiling) step, so the ETA is not skewed by compilation.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO


def format_duration(seconds: float) -> str:
  """45s, 12m05s, 3h12m, 2d04h: two units at most, the larger first."""
  s = max(int(round(seconds)), 0)
  days, s = divmod(s, 86400)
  hours, s = divmod(s, 3600)
  minutes, s = divmod(s, 60)
  if days:
    return f"{days}d{hours:02d}h"
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{s:02d}s"
  return f"{s}s"


def _format_value(v: Any) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
  """Reports `done` out of `total` units of work (steps, chunks, batches).

  Args:
    total: units in the whole job (a resumed job still counts from 0).
    label: what is running, first word of every line ('train', 'sample').
    unit: the name of one unit ('step', 'chunk').
    items_per_unit: with `items_name`, shows a rate in items (e.g. images
      per step); otherwise the rate is in units per second.
    items_name: e.g. 'images'.
    stream: where to write (default sys.stderr at the time of writing).
    live: redraw a bar in place between lines (default: stream is a TTY).
    every_fraction: a line each time this fraction of `total` is passed.
    every_seconds: a line at least this often while updates arrive.
    refresh_seconds: the live bar is redrawn at most this often.
    enabled: False makes every method a no-op (non-lead processes).
    clock: seconds, monotonic (a fake one in tests).
  """

  def __init__(self, total: int, *, label: str, unit: str = "step",
               items_per_unit: int | None = None, items_name: str = "images",
               stream: TextIO | None = None, live: bool | None = None,
               every_fraction: float = 0.1, every_seconds: float = 300.0,
               refresh_seconds: float = 0.25, enabled: bool = True,
               clock: Callable[[], float] = time.monotonic):
    self.total = max(int(total), 0)
    self.label, self.unit = label, unit
    self.items_per_unit, self.items_name = items_per_unit, items_name
    self._stream = stream
    self._live = live
    self._parts = max(int(round(1 / every_fraction)), 1)
    self.every_seconds, self.refresh_seconds = every_seconds, refresh_seconds
    self.enabled = enabled
    self._clock = clock
    self._created = clock()
    self._origin: tuple[int, float] | None = None  # (done, time) of 1st update
    self._last_part = -1
    self._last_line = 0.0
    self._last_draw = float("-inf")
    self._bar_width = 0  # characters of the live bar now on screen

  @property
  def stream(self) -> TextIO:
    return self._stream if self._stream is not None else sys.stderr

  @property
  def live(self) -> bool:
    if self._live is None:
      try:
        self._live = bool(self.stream.isatty())
      except (AttributeError, ValueError):  # no isatty, or a closed stream
        self._live = False
    return self._live

  def rate(self, done: int, now: float) -> float | None:
    """Units per second since the first update; None before there is one."""
    if self._origin is None or done <= self._origin[0] or now <= self._origin[1]:
      return None
    return (done - self._origin[0]) / (now - self._origin[1])

  def line(self, done: int, now: float, **values: Any) -> str:
    """The compact status: label, done/total, values, rate, ETA."""
    return f"{self.label}  {self._status(done, now, values)}"

  def _status(self, done: int, now: float, values: dict[str, Any]) -> str:
    pct = 100.0 * done / self.total if self.total else 100.0
    parts = [f"{self.unit} {done}/{self.total} ({pct:.0f}%)"]
    parts += [f"{k} {_format_value(v)}" for k, v in values.items() if v is not None]
    rate = self.rate(done, now)
    if rate is not None:
      if self.items_per_unit:
        parts.append(f"{rate * self.items_per_unit:.3g} {self.items_name}/s")
      else:
        parts.append(f"{rate:.3g} {self.unit}s/s")
      if done < self.total:
        parts.append(f"ETA {format_duration((self.total - done) / rate)}")
    if done >= self.total:
      parts.append(f"took {format_duration(now - self._created)}")
    return "  ".join(parts)

  def _part(self, done: int) -> int:
    return done * self._parts // self.total if self.total else self._parts

  def due(self, done: int) -> bool:
    """Whether update(done) will print a line.

    Lets a caller whose work is dispatched asynchronously (a jitted step)
    wait for it first, so the printed rate counts finished work only.
    """
    return self.enabled and (
        self._origin is None or self._part(done) > self._last_part
        or done >= self.total or self._clock() - self._last_line >= self.every_seconds)

  def update(self, done: int, **values: Any) -> None:
    """Records that `done` units are complete; prints when it is time.

    `values` (e.g. loss=0.031) are shown as they are; None values are left
    out. Cheap enough to call every step: it only reads the clock.
    """
    if not self.enabled:
      return
    now = self._clock()
    if self.due(done):
      if self._origin is None:
        self._origin = (done, now)
      self._last_part, self._last_line = self._part(done), now
      self._write_line(self.line(done, now, **values))
    elif self.live and now - self._last_draw >= self.refresh_seconds:
      self._draw_bar(done, now, values)

  def say(self, message: str) -> None:
    """A plain line (e.g. 'resumed from step 800'), above any live bar."""
    if self.enabled:
      self._write_line(f"{self.label}  {message}")

  def end(self) -> None:
    """Moves past a live bar left on screen (e.g. when the loop raised)."""
    if self._bar_width:
      print(file=self.stream, flush=True)
      self._bar_width = 0

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.end()

  def _write_line(self, text: str) -> None:
    if self._bar_width:  # overwrite the bar, then start a fresh line
      text = "\r" + text.ljust(self._bar_width)
      self._bar_width = 0
    print(text, file=self.stream, flush=True)

  def _draw_bar(self, done: int, now: float, values: dict[str, Any]) -> None:
    self._last_draw = now
    width = 24
    filled = width * done // self.total if self.total else width
    bar = "#" * filled + "." * (width - filled)
    text = f"{self.label}  [{bar}]  {self._status(done, now, values)}"
    padded = text.ljust(self._bar_width)
    self._bar_width = len(text)
    self.stream.write("\r" + padded)
    self.stream.flush()


def devices_text(n: int) -> str:
  """'1 device', '4 devices'."""
  return f"{n} device" + ("" if n == 1 else "s")
