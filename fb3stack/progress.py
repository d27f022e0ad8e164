"""One progress helper for every long phase (embedding, feature extraction, training, prediction).

On a terminal it is a tqdm bar (rate and ETA, redrawn in place). When stderr is not a terminal (CI, `> file`,
a Kaggle log) redraws would fill the log with carriage returns, so it logs one line at every ~10% instead,
with the same rate and ETA. `FB3STACK_PROGRESS=bar|lines|off` forces a mode.

Every mode is a tqdm, so `from fb3stack.progress import progress as tqdm` is a one-line switch at a call site.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

MODES = ("bar", "lines", "off")
# in lines mode a loop that ends sooner than this logs nothing (an evaluation pass of a few batches is not a phase)
MIN_SECONDS = 5.0
UNSIZED_SECONDS = 30.0  # without a total, a line every 30 s instead of every 10%


def mode() -> str:
    forced = os.environ.get("FB3STACK_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    return "bar" if hasattr(sys.stderr, "isatty") and sys.stderr.isatty() else "lines"


class LineProgress(tqdm):
    """A tqdm that logs a line (rate, ETA) each time another 10% of `total` is done, and one at the end, instead
    of redrawing a bar."""

    monitor_interval = 0  # no monitor thread: it exists to force redraws

    def __init__(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None,
                 sink: Callable[[str], object] | None = None, min_seconds: float | None = None, eta: bool = True,
                 **kwargs: Any) -> None:
        self.sink, self.logged_t, self.eta = sink or logger.info, 0.0, eta
        self.min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
        # display() decides what is logged: tqdm calls it after every update and writes nothing of its own
        kwargs.update(leave=True, miniters=1, mininterval=0, delay=0, file=io.StringIO())
        super().__init__(iterable, desc or "progress", total, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now, total, final = self._time(), self.total, self.disable  # close() disables the bar, then displays it
        if not self.n:
            return True
        if final:
            due = self.logged_t or now - self.start_t >= self.min_seconds
        elif total:
            crossed = 10 * self.n // total > 10 * self.last_print_n // total  # last_print_n: the previous update's
            due = crossed and self.n < total and now - self.start_t >= self.min_seconds
        else:
            due = now - (self.logged_t or self.start_t) >= UNSIZED_SECONDS
        if due:
            self.logged_t = now
            counts = "{percentage:3.0f}% {n_fmt}/{total_fmt}" if total else "{n_fmt} {unit}"
            when = "ETA {remaining}" if total and not final and self.eta else "elapsed {elapsed}"
            self.sink(self.format_meter(**{**self.format_dict, "ncols": None,
                                           "bar_format": f"{{desc}}: {counts} [{{rate_fmt}}, {when}{{postfix}}]"}))
        return True


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, eta: bool = True,
             **kwargs: Any) -> tqdm:
    """A progress-reporting wrapper around `iterable`: a tqdm bar on a terminal, ~10% log lines otherwise.

    Takes tqdm's keywords (leave, mininterval, unit, ...); the lines use `unit` and ignore the redraw settings.
    `eta=False` shows the elapsed time instead of an ETA, for steps of very different lengths (a zoo's jobs: a
    TF-IDF fold takes seconds, a transformer fold hours), where an ETA from the mean rate says nothing.
    """
    chosen = mode()
    if chosen == "bar":
        from tqdm.auto import tqdm as bar

        if not eta:
            kwargs.setdefault("bar_format", "{l_bar}{bar}| {n_fmt}/{total_fmt} [elapsed {elapsed}{postfix}]")
        return bar(iterable, desc=desc, total=total, **{"dynamic_ncols": True, **kwargs})
    return LineProgress(iterable, desc, total, disable=chosen == "off", eta=eta, **kwargs)


def quiet_third_party_bars() -> None:
    """Outside a terminal, also silence the bars of Hugging Face libraries (e.g. transformers' "Loading weights").

    They read the variable when first imported, so the CLI calls this before anything imports them.
    """
    if mode() != "bar":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
