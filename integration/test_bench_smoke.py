"""Smoke run of the side-by-side benchmark (bench/bench.py, issue 8).

10,000 records through ours (PostgreSQL) and one peer (Quix Streams' PostgreSQL sink when
the peers registry lists it), with the harness's own broker and servers: the results file
and the chart are written and the figures are sane. The full benchmark is ``make bench``.
When no peer can run, only ours runs and the reason is reported as a warning in pytest's
summary (not a skip).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 10_000
OURS = "ours-postgres/confluent"
PREFERRED_PEER = "quix-postgres"  # a virtualenv: the quickest peer to install and start


def choose_peer() -> tuple[str | None, str]:
    """The peer to run, or None and why not."""
    try:
        from bench.peers.registry import all_peers

        names = [peer.name for peer in all_peers()]
    except Exception as exc:
        return None, f"bench.peers.registry is not usable: {type(exc).__name__}: {exc}"
    if not names:
        return None, "bench.peers.registry lists no peer"
    return (PREFERRED_PEER if PREFERRED_PEER in names else names[0]), ""


@pytest.mark.timeout(400)
def test_bench_smoke(tmp_path: Path) -> None:
    peer, why = choose_peer()
    command = [
        sys.executable,
        str(ROOT / "bench" / "bench.py"),
        "--records",
        str(RECORDS),
        "--crash-records",
        "0",
        "--latency-s",
        "0",
        "--engines",
        "confluent",
        "--only",
        ",".join([OURS, peer] if peer else [OURS]),
        "--out",
        str(tmp_path),
    ]
    if peer is None:
        command.append("--no-peers")
    run = subprocess.run(command, capture_output=True, text=True, timeout=380, check=False)
    print(run.stdout)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    (results_path,) = tmp_path.glob("*.json")
    (chart,) = tmp_path.glob("*.png")
    assert chart.read_bytes().startswith(b"\x89PNG") and chart.stat().st_size > 10_000
    results = json.loads(results_path.read_text())
    assert results["settings"]["records"] == RECORDS
    assert results["machine"]["cores"] and results["versions"]["PostgreSQL"]
    contenders = {c["name"]: c for c in results["contenders"]}

    ours = contenders[OURS]
    assert ours["status"] == "ok", ours
    assert ours["count"] == RECORDS and ours["distinct"] == RECORDS
    figures = ours["figures"]
    assert 0 < figures["records_per_s"] < figures["steady_records_per_s"]
    assert figures["cpu_s_per_million"] > 0 and 20 < ours["peak_rss_mb"] < 2000
    assert figures["ratio_to_ours_postgres"] == pytest.approx(1.0)

    if peer is None:
        warnings.warn(f"bench smoke ran only ours, no peer: {why}", stacklevel=1)
    elif contenders[peer]["status"] != "ok":
        warnings.warn(
            f"bench smoke ran only ours: peer {peer} {contenders[peer]['status']}", stacklevel=1
        )
    else:
        assert contenders[peer]["count"] == RECORDS
        assert contenders[peer]["distinct"] == RECORDS
        assert contenders[peer]["figures"]["ratio_to_ours_postgres"] > 0

    from bench.bench import readme_section

    section = readme_section(results, results_path)
    assert f"| {OURS} |" in section and "Redpanda Connect" in section
