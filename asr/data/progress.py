"""Progress of the long steps (featurizing a split, a training epoch, scoring a split, synthesis, a download): a tqdm
bar redrawn in place on a terminal; anywhere else (a CI log, `mlflow run` output, a pipe, a file), where every
redraw of a bar is kept as carriage-return noise, a short plain line every PERCENT_STEP percent instead.

Whether progress is shown at all is the caller's `enabled` (the command line decides with `wanted`: on a terminal,
or with $ASR_PROGRESS set); this module only decides how.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

ENV = "ASR_PROGRESS"  # set (non-empty): show progress even where stderr is not a terminal, as plain lines
PERCENT_STEP = 10      # a plain line each time progress crosses another multiple of this many percent...
MIN_SECONDS = 10.0     # ...and at least this long after the previous one (a fast step prints at most its last line)
UNKNOWN_TOTAL_SECONDS = 60.0  # without a known total: a line this often


def on_terminal() -> bool:
    """Whether stderr (where progress goes) is a terminal, on which a bar redraws one line in place."""
    return sys.stderr.isatty()


def wanted() -> bool:
    """Whether a command shows progress: on a terminal, or anywhere with $ASR_PROGRESS set (plain lines there)."""
    return on_terminal() or bool(os.environ.get(ENV))


class Lines:
    """tqdm's interface as the package uses it (update, set_postfix, close, iteration, `with`), written as plain
    lines on stderr: `DESC: N/TOTAL UNIT (P%), ELAPSED[, POSTFIX]`, when progress crosses another PERCENT_STEP
    percent at least MIN_SECONDS after the line before (every UNKNOWN_TOTAL_SECONDS without a total), and once at
    the end (`leave`; a step whose caller prints its own summary passes leave=False)."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, initial: float = 0, unit_scale: bool = False,
                 min_seconds: float = MIN_SECONDS):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.leave = iterable, total, desc, unit, leave
        self.n, self.unit_scale, self.min_seconds = initial, unit_scale, min_seconds
        self.postfix = ""
        self.started = self.last_line = time.monotonic()
        self.last_step = self._step()  # a resumed download starts past its first steps
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total:
            step = self._step()
            due = step > self.last_step and self.n < self.total and now - self.last_line >= self.min_seconds
            self.last_step = max(self.last_step, step) if due else self.last_step
        else:
            due = now - self.last_line >= max(self.min_seconds, UNKNOWN_TOTAL_SECONDS)
        if due:
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and self.leave:
            self._write(time.monotonic())
        self.closed = True

    def line(self, now: float) -> str:
        """The progress line as of `now` (time.monotonic())."""
        done = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        done += "" if self.unit_scale else f" {self.unit}"
        done += f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return (f"{self.desc}: {done}, {tqdm.format_interval(now - self.started)}"
                f"{f', {self.postfix}' if self.postfix else ''}")

    def _step(self) -> int:
        return int(100 * self.n / self.total // PERCENT_STEP) if self.total else 0

    def _amount(self, n: float) -> str:
        if self.unit_scale:
            return f"{tqdm.format_sizeof(n, divisor=1024)}{self.unit}"
        return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"  # 1,234,567 utt, not 1.23457e+06

    def _write(self, now: float) -> None:
        self.last_line = now
        print(self.line(now), file=sys.stderr, flush=True)


Bar = tqdm | Lines


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, leave: bool = True, initial: float = 0, unit_scale: bool = False) -> Bar:
    """A progress bar over `iterable` (or updated by hand, to `total`): tqdm on a terminal, plain `Lines` elsewhere,
    nothing shown unless `enabled`."""
    if enabled and not on_terminal():
        return Lines(iterable, total, desc, unit, leave, initial, unit_scale)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave, initial=initial,
                unit_scale=unit_scale, unit_divisor=1024)
