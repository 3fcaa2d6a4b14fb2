"""Parts of the side-by-side benchmark (bench/bench.py) whose figures a reader trusts.

The RSS sampler counts a contender's processes, not copies of the bench: a child between
fork and exec shows its parent's memory as its own; summing it made a 96 MB contender read
434 MB once (bench/results/2026-12-04-0915.json). A peer that could not finish its
throughput run still gets a crash run, sized from what it stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.bench import (
    Outcome,
    RssSampler,
    kill_time,
    measured_pids,
    own_children,
    peer_budget,
    reduced_crash_records,
)


@contextmanager
def forked_copy() -> Iterator[int]:
    """A child of this process that never execs (what a child is before its exec)."""
    pid = os.fork()
    if pid == 0:  # the child: no exec, no Python cleanup
        time.sleep(30)
        os._exit(0)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_child_that_has_not_exec_d_is_not_measured_and_one_that_has_is() -> None:
    servers = own_children()
    with forked_copy() as copy:
        program = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            deadline = time.monotonic() + 10
            while program.pid not in measured_pids(servers) and time.monotonic() < deadline:
                time.sleep(0.02)  # until its exec
            pids = measured_pids(servers)
            assert program.pid in pids
            assert copy not in pids
        finally:
            program.kill()
            program.wait()


def test_the_sampled_peak_excludes_this_process_memory_held_by_a_forked_copy() -> None:
    ballast = bytearray(200 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # resident, and inherited by the fork
    with RssSampler() as rss, forked_copy():
        program = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
        program.wait()
    assert 0 < rss.peak_mb < 100, rss.peak_mb
    del ballast


def partial_peer(stored: int, wall_s: float, active_s: float) -> Outcome:
    outcome = Outcome("quix-mongodb", "peer", "mongodb", "3.28.1", {})
    outcome.status = f"partial: {stored:,} of 1,000,000 stored when its 150 s budget ran out"
    outcome.done, outcome.wall_s, outcome.active_s = stored, wall_s, active_s
    return outcome


def test_a_peer_that_stored_little_gets_a_crash_run_over_half_of_it() -> None:
    assert reduced_crash_records(partial_peer(10_991, 160.0, 150.0), 200_000) == 5_000
    assert reduced_crash_records(partial_peer(300, 160.0, 150.0), 200_000) == 1_000
    assert reduced_crash_records(partial_peer(900_000, 160.0, 150.0), 200_000) == 200_000


def test_the_kill_lands_a_third_of_the_way_at_the_rate_the_peer_showed() -> None:
    # 10 s to start, then 10,000 records in 150 s: 5,000 records, a third, in 25 s.
    assert kill_time(partial_peer(10_000, 160.0, 150.0), 1_000_000, 5_000) == 35.0
    finished = partial_peer(0, 110.0, 100.0)
    finished.status, finished.done = "ok", None
    assert kill_time(finished, 1_000_000, 300_000) == 20.0
    assert kill_time(None, 1_000_000, 200_000) == 15.0


def test_a_crash_run_gets_twice_the_budget_and_a_latency_run_none() -> None:
    assert peer_budget(150.0, "run") == 150.0
    assert peer_budget(150.0, "crash") == 300.0
    assert peer_budget(150.0, "latency") is None
    assert peer_budget(None, "crash") is None
