"""Entry point of the ``data-ingest`` console script.

It catches SIGINT and SIGTERM from its first instant, before the heavy imports (about half
a second): a signal that arrives while the process is still starting (a rollout, a
scale-down right after a scale-up) is remembered and handled as soon as the pipeline runs,
so the process still stops cleanly and exits 0 instead of dying by the signal.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

EARLY_SIGNALS: list[int] = []
"""Signals received before ``connector.cli`` installed its own handlers, in order."""


def _remember(signum: int, _frame: FrameType | None) -> None:
    EARLY_SIGNALS.append(signum)


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _remember)
    from connector.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
