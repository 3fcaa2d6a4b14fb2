"""Bounded awaits: a timeout is raised, and a cancellation is never lost."""

from __future__ import annotations

import asyncio

import pytest

from connector.timeouts import cancel_and_wait, within


async def test_within_returns_the_result_or_raises_timeout_error() -> None:
    assert await within(asyncio.sleep(0, "done"), 1) == "done"
    assert await within(asyncio.sleep(0, "unbounded"), None) == "unbounded"
    with pytest.raises(TimeoutError):
        await within(asyncio.Event().wait(), 0.05)


async def test_a_cancellation_as_the_awaited_call_finishes_is_kept() -> None:
    """The case Python 3.11's ``wait_for`` gets wrong: the call's result and the task's
    cancellation arrive in the same loop iteration; the loop must still end."""
    for _ in range(20):
        call: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def commit_loop(call: asyncio.Future[int] = call) -> None:
            for _ in range(100):  # a loop that ignored the cancellation ends here
                await within(call, 30)
                await asyncio.sleep(0)  # between commits

        task = asyncio.create_task(commit_loop())
        await asyncio.sleep(0)  # the loop now awaits the call
        call.set_result(1)  # the call finishes ...
        task.cancel()  # ... and the task is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await within(task, 1)


async def test_cancel_and_wait_raises_what_the_task_raised() -> None:
    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0.01)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(task, 1, "the failing task")


async def test_cancel_and_wait_leaves_a_task_that_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await within(cancel_and_wait(task, 0.1, "the stubborn loop"), 2)
    assert not task.done()
    assert "the stubborn loop did not end within 0.1 s of its cancellation" in caplog.text
    assert "stubborn" in caplog.text.split("leaving it:", 1)[1]  # its stack is logged
    task.cancel()
