"""The live progress bar of ``run --until-caught-up`` on a terminal (rich).

It shows the records done out of done + lag, the lag left, the rate and the time left;
log lines are printed above it. When the run has caught up the bar ends at 100%.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)
from rich.text import Text

from connector.progress import Progress

BAR_INTERVAL_S = 1.0


class _LagColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        lag = task.fields.get("lag")
        return Text(f"lag {'?' if lag is None else f'{lag:,}'}")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate") or 0.0
        return Text(f"{rate:,.0f} records/s")


class BarProgress:
    """A live bar on the terminal of stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self._bar = RichProgress(
            TextColumn("ingest"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            _LagColumn(),
            _RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            redirect_stdout=False,
        )
        self._task = self._bar.add_task("ingest", total=None, lag=None, rate=0.0)
        self._bar.start()

    @property
    def interval_s(self) -> float:
        return BAR_INTERVAL_S

    def update(self, progress: Progress) -> None:
        total = None if progress.lag is None else progress.records + progress.lag
        self._bar.update(
            self._task,
            completed=progress.records,
            total=total,
            lag=progress.lag,
            rate=progress.rate,
            refresh=True,
        )

    def close(self, progress: Progress, finished: bool) -> None:
        if finished:
            self.update(
                Progress(
                    progress.records,
                    progress.inserted,
                    progress.duplicates,
                    progress.conflicts,
                    0,
                    progress.elapsed_s,
                )
            )
        self._bar.stop()
