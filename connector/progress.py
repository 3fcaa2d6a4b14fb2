"""Progress of a run: what the pipeline reports, and the plain periodic log lines.

The pipeline hands a ``Progress`` snapshot to a ``ProgressSink`` every ``interval_s``:
``LogProgress`` writes one log line each time (the default, and what a run writes when its
output is not a terminal); ``connector.progress_bar.BarProgress`` draws a live bar.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("connector.progress")

PROGRESS_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Progress:
    """Counts so far; ``lag`` is what is left up to the end offsets (None: not known yet)."""

    records: int
    inserted: int
    duplicates: int
    conflicts: int
    lag: int | None
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ProgressSink(Protocol):
    """Receives the pipeline's progress while it runs."""

    @property
    def interval_s(self) -> float: ...

    def update(self, progress: Progress) -> None: ...

    def close(self, progress: Progress, finished: bool) -> None:
        """The run ended; ``finished``: it caught up (a bar then shows 100%)."""


class LogProgress:
    """One log line per interval."""

    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._interval_s = interval_s

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def update(self, progress: Progress) -> None:
        lag = "" if progress.lag is None else f", lag {progress.lag}"
        log.info(
            "progress: %d records (%d ingested, %d duplicates, %d conflicts)%s, %.0f records/s",
            progress.records,
            progress.inserted,
            progress.duplicates,
            progress.conflicts,
            lag,
            progress.rate,
        )

    def close(self, progress: Progress, finished: bool) -> None:
        """Nothing to tear down: the summary follows."""
