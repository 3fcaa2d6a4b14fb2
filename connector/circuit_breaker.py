"""The circuit breaker: stop when most recent records fail, instead of dead-lettering a topic.

A broken producer or schema makes every record fail; with ``errors.tolerance: all`` the
whole topic would then be copied into the dead-letter topic. The breaker counts handled
and failed records over a sliding window of the last ``window`` records and trips when the
ratio of failures in a full window exceeds ``max_ratio``. Records are counted in runs (a
run of successes is one entry), so the hot path costs one append per run, not per record.
"""

from __future__ import annotations

from collections import deque


class CircuitBreaker:
    """Failure ratio over (about) the last ``window`` records."""

    def __init__(self, max_ratio: float, window: int) -> None:
        self.max_ratio = max_ratio
        self.window = window
        self._runs: deque[tuple[int, int]] = deque()  # (records, failures) in arrival order
        self._records = 0
        self._failures = 0

    def count(self, records: int, failures: int = 0) -> None:
        """Count ``records`` handled, of which ``failures`` failed. Records are counted when
        they are mapped, so that the window follows the order records arrive in; a record
        that fails later (in the backend) adds a failure with ``records`` 0."""
        if not records and not failures:
            return
        self._runs.append((records, failures))
        self._records += records
        self._failures += failures
        runs = self._runs
        # Drop the oldest runs while the window stays full without them.
        while runs and self._records - runs[0][0] >= self.window:
            old_records, old_failures = runs.popleft()
            self._records -= old_records
            self._failures -= old_failures

    @property
    def ratio(self) -> float:
        return min(1.0, self._failures / self._records) if self._records else 0.0

    def tripped(self) -> bool:
        """True when the window is full and its failure ratio exceeds ``max_ratio``."""
        return self._records >= self.window and self.ratio > self.max_ratio

    def describe(self) -> str:
        """The tripped state in words, for the error that stops the run."""
        return (
            f"{self._failures} of the last {self._records} records failed (ratio "
            f"{self.ratio:.2f}, errors.max_failure_ratio {self.max_ratio:.2f} over "
            f"errors.failure_window {self.window})"
        )
