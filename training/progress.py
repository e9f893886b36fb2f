"""Progress bars of training and evaluation, readable on a terminal and in a log file or pipe alike."""

from __future__ import annotations

import sys

from tqdm import tqdm

TERMINAL_INTERVAL = 0.5  # seconds between redraws on a terminal
LOG_INTERVAL = 15  # seconds between lines in a file or pipe (each redraw there is a new line)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar on stderr that redraws at most every TERMINAL_INTERVAL seconds on a terminal and every
    LOG_INTERVAL seconds otherwise; give it values to show with `show` (never `set_postfix`'s redraw)."""
    interval = TERMINAL_INTERVAL if sys.stderr.isatty() else LOG_INTERVAL
    return tqdm(iterable, dynamic_ncols=True, mininterval=interval, **kwargs)


def show(bar: tqdm, **values) -> None:
    """Values shown beside the count from the bar's next redraw on. `set_postfix` would redraw at once on
    every call: a line per batch in a log, with the count stale (tqdm updates it only at its interval)."""
    bar.set_postfix(values, refresh=False)
