"""One progress helper for every long phase (embedding, feature extraction, training, prediction).

On a terminal it is a tqdm bar (rate and ETA, redrawn in place). When stderr is not a terminal (CI, `> file`,
a Kaggle log) redraws would fill the log with carriage returns, so it logs one line at every ~10% instead,
with the same rate and ETA. `FB3STACK_PROGRESS=bar|lines|off` forces a mode.

The call signature is tqdm's (the keywords the code base uses), so `from fb3stack.progress import progress as
tqdm` is a one-line switch at a call site; `set_postfix` and `close` work in both modes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

MODES = ("bar", "lines", "off")
# in lines mode a loop that ends sooner than this logs nothing (an evaluation pass of a few batches is not a phase)
MIN_SECONDS = 5.0


def mode() -> str:
    forced = os.environ.get("FB3STACK_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = sys.stderr
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class LineProgress:
    """Iterates `iterable` and logs a line each time another ~10% of `total` is done (and at the end)."""

    def __init__(self, iterable: Iterable[T] | None, desc: str = "", total: int | None = None, step: float = 0.1,
                 unit: str = "it", sink: Any = None, min_seconds: float | None = None) -> None:
        self.iterable = iterable
        self.desc = desc or "progress"
        self.total = total if total is not None else _len(iterable)
        self.step, self.unit = step, unit
        self.n = 0
        self.postfix = ""
        self._sink = sink or logger.info
        self._t0 = time.perf_counter()
        self._k = 1
        self._next = self._threshold(1)
        self._closed = False
        self._last_report = self._t0
        self._emitted = False
        self.min_seconds = MIN_SECONDS if min_seconds is None else min_seconds

    def _threshold(self, k: int) -> int:
        # with no total, report every 30 s of work instead (checked in update)
        return max(1, math.ceil(self.total * self.step * k)) if self.total else 0

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("LineProgress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.total:
            if self._next <= self.n < self.total:
                if now - self._t0 >= self.min_seconds:
                    self._emit(now)
                while self._threshold(self._k) <= self.n:
                    self._k += 1
                self._next = self._threshold(self._k)
        elif now - self._last_report >= 30:
            self._emit(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = time.perf_counter()
        if self.n and (self._emitted or now - self._t0 >= self.min_seconds):
            self._emit(now, final=True)

    def _emit(self, now: float, final: bool = False) -> None:
        self._last_report, self._emitted = now, True
        elapsed = now - self._t0
        rate = self.n / elapsed if elapsed > 0 else float("inf")
        rate_s = f"{rate:.1f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/{self.unit}"
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            head = f"{self.desc}: {pct:3.0f}% {self.n}/{self.total}"
            tail = f"elapsed {_duration(elapsed)}" if final else f"ETA {_duration(eta)}"
        else:
            head, tail = f"{self.desc}: {self.n} {self.unit}", f"elapsed {_duration(elapsed)}"
        extra = f" | {self.postfix}" if self.postfix else ""
        self._sink(f"{head} [{rate_s}, {tail}]{extra}")


class _Silent(LineProgress):
    def _emit(self, now: float, final: bool = False) -> None:
        pass


def _len(iterable: Iterable | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, **kwargs: Any) -> Any:
    """A progress-reporting wrapper around `iterable`: a tqdm bar on a terminal, ~10% log lines otherwise.

    Extra keywords (leave, mininterval, unit, ...) go to tqdm in bar mode; `unit` is also used by the lines.
    """
    chosen = mode()
    if chosen == "bar":
        from tqdm.auto import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, desc=desc, total=total, **kwargs)
    cls = _Silent if chosen == "off" else LineProgress
    return cls(iterable, desc=desc, total=total, unit=kwargs.get("unit", "it"))


def quiet_third_party_bars() -> None:
    """Outside a terminal, also silence the bars of Hugging Face libraries (e.g. transformers' "Loading weights").

    They read the variable when first imported, so the CLI calls this before anything imports them.
    """
    if mode() != "bar":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
