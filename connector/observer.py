"""What the pipeline reports about its work, for whoever watches it (metrics).

The pipeline calls these once per batch, commit or retry, never per record, and knows
nothing of how they are exposed. The base class ignores everything.
"""

from __future__ import annotations

from collections.abc import Sequence

from connector.backends import Outcome
from connector.dlq import DeadLetter
from connector.records import MappedObject


class PipelineObserver:
    """Receives the pipeline's events; every method is a cheap no-op here."""

    def acknowledged(self, objects: Sequence[MappedObject], outcomes: Sequence[Outcome]) -> None:
        """The backend's outcomes for ``objects`` (in order), as the pipeline counted them."""

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        """The broker acknowledged the dead-letter records of ``letters``."""

    def batch_written(self, size: int, seconds: float) -> None:
        """One successful backend write of ``size`` objects took ``seconds``."""

    def retried(self, operation: str) -> None:
        """A transient failure of ``operation`` (e.g. "backend write") is being retried."""

    def committed(self, seconds: float, ok: bool) -> None:
        """An offset commit finished (``ok``) or failed, after ``seconds``."""
