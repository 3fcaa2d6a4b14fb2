"""Bounded awaits that never lose a cancellation.

``asyncio.wait_for`` is not used anywhere in the connector (ruff bans it): on Python 3.11
it returns the result instead of raising ``CancelledError`` when the task is cancelled
while the awaited call has just finished (CPython gh-86296, fixed by the 3.12 rewrite).
A loop task cancelled at that instant, such as the pipeline's commit loop whose commit came
back from the client thread in the same loop iteration, then runs on, and the shutdown
that awaits it never ends: fleet chaos runs in CI saw members ignore SIGTERM this way.
``asyncio.timeout`` keeps the cancellation; ``within`` is ``wait_for`` built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


async def within(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    """``await awaitable``; past ``timeout_s`` (None: no bound) it is cancelled and
    ``TimeoutError`` raised."""
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def cancel_and_wait(task: asyncio.Task[Any], timeout_s: float, what: str) -> None:
    """Cancel ``task`` and wait for it to end, at most ``timeout_s``.

    A task that catches the cancellation (a library's own ``wait_for`` can do it, see the
    module docstring) is left behind with its stack logged, so a shutdown never waits on
    it forever; ``asyncio.run`` cancels it again when the process ends.
    """
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        where = io.StringIO()
        task.print_stack(file=where)
        log.warning(
            "shutdown: %s did not end within %.1f s of its cancellation; leaving it:\n%s",
            what,
            timeout_s,
            where.getvalue(),
        )
        return
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
