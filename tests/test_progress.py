"""Progress reporting: the log line and the bar, without a pipeline."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from connector.progress import LogProgress, Progress
from connector.progress_bar import BarProgress


def test_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sink = LogProgress(2.5)
    assert sink.interval_s == 2.5
    sink.update(Progress(100, 90, 10, 0, None, 4.0))
    sink.update(Progress(300, 280, 20, 0, 700, 6.0))
    assert [r.getMessage() for r in caplog.records] == [
        "progress: 100 records (90 ingested, 10 duplicates, 0 conflicts), 25 records/s",
        "progress: 300 records (280 ingested, 20 duplicates, 0 conflicts), lag 700, 50 records/s",
    ]


def test_bar_shows_done_lag_rate_and_ends_at_100_percent() -> None:
    screen = io.StringIO()
    bar = BarProgress(Console(file=screen, force_terminal=True, color_system=None, width=120))
    bar.update(Progress(2500, 2500, 0, 0, 7500, 1.0))
    bar.close(Progress(10_000, 10_000, 0, 0, 1200, 4.0), finished=True)
    text = screen.getvalue()
    assert " 25% " in text and "2500/10000" in text and "lag 7,500" in text
    assert "100%" in text and "10000/10000" in text and "lag 0" in text
    assert "2,500 records/s" in text and "ETA" in text


def test_bar_of_an_unfinished_run_stays_where_it_was() -> None:
    screen = io.StringIO()
    bar = BarProgress(Console(file=screen, force_terminal=True, color_system=None, width=120))
    bar.update(Progress(500, 500, 0, 0, 500, 1.0))
    bar.close(Progress(500, 500, 0, 0, None, 2.0), finished=False)
    assert "100%" not in screen.getvalue()
    assert " 50% " in screen.getvalue()
