"""The worker file and the worker's connectors directory, without Kafka."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from connector.cli import EXIT_CONFIG, EXIT_FAILURE, main
from connector.metrics import Metrics
from connector.rest import parse_listen
from connector.worker import Worker


def test_an_invalid_worker_file_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("rest:\n  listen: nowhere\n  tokn: x\n")
    assert main(["worker", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "rest.listen" in err and "expected HOST:PORT" in err
    assert "rest.tokn" in err


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8083") == ("127.0.0.1", 8083)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8083", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            parse_listen(bad)


def test_invalid_pipeline_files_are_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("kafka: [\n")
    (tmp_path / "wrong.yml").write_text("kafka: {bootstrap_servers: x}\nroutes: []\n")
    (tmp_path / "notes.txt").write_text("not a pipeline")
    worker = Worker("w", Metrics(), base_dir=tmp_path)
    problems = worker.load_directory(tmp_path)
    assert worker.connectors == {}
    assert len(problems) == 2
    assert "broken.yaml" in problems[0] and "invalid YAML" in problems[0]
    assert "wrong.yml" in problems[1] and "routes" in problems[1]


def test_a_port_in_use_exits_1_naming_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "worker.yaml"
        path.write_text(f"rest: {{listen: '127.0.0.1:{port}'}}\n")
        assert main(["worker", "-c", str(path)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"the REST API cannot listen on 127.0.0.1:{port}" in err
