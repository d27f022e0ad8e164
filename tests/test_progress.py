"""The progress helper: a tqdm bar on a terminal, a line every ~10% when the output is a file or CI log."""

from __future__ import annotations

import logging

import pytest

from fb3stack.progress import LineProgress, mode, progress


def test_lines_every_ten_percent_with_rate_and_eta(monkeypatch, caplog):
    monkeypatch.setenv("FB3STACK_PROGRESS", "lines")
    monkeypatch.setattr("fb3stack.progress.MIN_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="fb3stack.progress"):
        out = [x * 2 for x in progress(range(200), desc="embed", unit="batch")]
    assert out == [x * 2 for x in range(200)]  # items pass through unchanged
    lines = [r.getMessage() for r in caplog.records]
    assert 9 <= len(lines) <= 11, lines
    assert lines[0].startswith("embed:  10% 20/200 [") and "batch/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("embed: 100% 200/200") and "elapsed" in lines[-1]


def test_small_and_unsized_iterables(monkeypatch):
    seen: list[str] = []
    bar = LineProgress(range(3), desc="three", sink=seen.append, min_seconds=0)
    assert list(bar) == [0, 1, 2]
    assert len(seen) == 3 and seen[-1].startswith("three: 100% 3/3")  # each item is >= 10%
    seen.clear()
    gen = LineProgress((i for i in range(5)), desc="gen", sink=seen.append, min_seconds=0)
    assert list(gen) == list(range(5)) and seen == [seen[-1]] and seen[0].startswith("gen: 5 it")


def test_postfix_and_close_work_like_tqdm(monkeypatch):
    seen: list[str] = []
    bar = LineProgress(range(10), desc="train", sink=seen.append, min_seconds=0)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    assert seen[-1].endswith("loss=0.100]") and len([s for s in seen if "100%" in s]) == 1


def test_quick_loops_stay_quiet():
    seen: list[str] = []
    assert sum(LineProgress(range(50), desc="eval", sink=seen.append)) == sum(range(50))
    assert seen == []  # done well within MIN_SECONDS: no line at all


def test_mode_follows_the_terminal_and_the_override(monkeypatch):
    monkeypatch.delenv("FB3STACK_PROGRESS", raising=False)
    assert mode() == "lines"  # pytest captures stderr: not a terminal

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    assert mode() == "bar"
    monkeypatch.setenv("FB3STACK_PROGRESS", "off")
    assert mode() == "off"


@pytest.mark.parametrize("forced", ["bar", "off"])
def test_forced_modes(monkeypatch, caplog, forced):
    monkeypatch.setenv("FB3STACK_PROGRESS", forced)
    monkeypatch.setattr("fb3stack.progress.MIN_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="fb3stack.progress"):
        bar = progress(range(20), desc="x", leave=False, mininterval=2)
        assert isinstance(bar, LineProgress) is (forced == "off") and bar.disable is (forced == "off")
        assert sum(bar) == sum(range(20))
    assert not caplog.records  # a bar draws on stderr, "off" shows nothing


def test_jobs_of_very_different_lengths_show_elapsed_not_an_eta(monkeypatch):
    """A zoo's (member, fold) jobs differ 1000-fold in length: an ETA from their mean rate misled (3:31 with 4 s
    left), so the job counter shows the elapsed time instead."""
    seen: list[str] = []
    bar = LineProgress(range(10), desc="train (member, fold) jobs", sink=seen.append, min_seconds=0, eta=False)
    assert list(bar) == list(range(10))
    assert seen and not any("ETA" in s for s in seen) and all("elapsed" in s for s in seen)
    monkeypatch.setenv("FB3STACK_PROGRESS", "bar")
    shown = progress(range(3), desc="jobs", eta=False, file=__import__("io").StringIO())
    list(shown)
    assert "<" not in shown.format_meter(**shown.format_dict)  # tqdm writes an ETA as elapsed<remaining
