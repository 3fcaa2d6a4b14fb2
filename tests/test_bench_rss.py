"""The benchmark's RSS sampler counts a contender's processes, not copies of the bench.

A child between fork and exec shows its parent's memory as its own; summing it made a
96 MB contender read 434 MB once (bench/results/2026-12-04-0915.json).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.bench import RssSampler, measured_pids, own_children


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
