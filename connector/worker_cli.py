"""``data-ingest worker -c worker.yaml`` and ``data-ingest run --rest-listen``.

The worker file::

    id: worker-1                  # worker_id in statuses (default: HOST:PORT of rest.listen)
    connectors_dir: connectors    # pipeline files hosted at start (name = file stem)
    rest:
      listen: 127.0.0.1:8083
      token: ${REST_TOKEN}        # optional: required as a bearer token by mutating calls
      token_for_reads: false      # true: by every call except /ping and /health
      tls: {cert_file: server.pem, key_file: server-key.pem}
    cluster:                      # optional: share connectors with the workers of this id
      id: ingest-prod
      kafka: {bootstrap_servers: ..., security: {...}}   # as in a pipeline file
      replication_factor: 3       # of the compacted config and status topics
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connector.config import KafkaConfig, PipelineConfig, substitute_env
from connector.connect_config import SecretFilter, flatten
from connector.entry import EARLY_SIGNALS
from connector.errors import ConfigError
from connector.metrics import Metrics
from connector.pipeline import RunSummary
from connector.rest import RestSettings, parse_listen, start_server
from connector.schemas import ObjectTypes
from connector.worker import Worker

log = logging.getLogger("connector")

TOKEN_ENV = "DATA_INGEST_REST_TOKEN"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestTlsConfig(_Section):
    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)


class RestConfig(_Section):
    listen: str = "127.0.0.1:8083"
    token: SecretStr | None = None
    token_for_reads: bool = False
    tls: RestTlsConfig | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


class ClusterConfig(_Section):
    """Workers with the same ``id`` share connectors through two compacted topics."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    kafka: KafkaConfig
    config_topic: str | None = Field(default=None, min_length=1)
    status_topic: str | None = Field(default=None, min_length=1)
    replication_factor: int = Field(default=1, ge=1)


class WorkerConfig(_Section):
    """The worker file."""

    id: str | None = Field(default=None, min_length=1)
    connectors_dir: str | None = None
    rest: RestConfig = Field(default_factory=RestConfig)
    cluster: ClusterConfig | None = None


def load_worker_config(path: Path) -> WorkerConfig:
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data = substitute_env(data, os.environ)
        return WorkerConfig.model_validate(data)
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"invalid YAML: {exc}"]) from None
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            lines = [
                f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()
            ]
            raise ConfigError(source, lines) from None
        raise ConfigError(source, str(exc).splitlines()) from None


def secret_filter() -> SecretFilter:
    """A filter hiding the secrets of hosted connectors, on every handler of the root logger."""
    hide = SecretFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(hide)
    return hide


def _on_signals(stop: Callable[[bool], None]) -> None:
    loop = asyncio.get_running_loop()
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        log.info("%s: stopping", signal.Signals(signum).name)
        stop(seen > 1)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    for early in EARLY_SIGNALS:
        on_signal(early)


def _settings(config: RestConfig, base: Path) -> RestSettings:
    host, port = parse_listen(config.listen)
    tls = config.tls

    def resolve(file: str) -> str:
        return file if Path(file).is_absolute() else str(base / file)

    return RestSettings(
        host=host,
        port=port,
        token=config.token.get_secret_value() if config.token else None,
        token_for_reads=config.token_for_reads,
        cert_file=resolve(tls.cert_file) if tls else None,
        key_file=resolve(tls.key_file) if tls else None,
    )


async def serve_worker(path: Path) -> int:
    """Run the worker until SIGINT/SIGTERM; 2 on a bad worker file, 1 when REST cannot bind."""
    config = load_worker_config(path)
    base = path.parent
    settings = _settings(config.rest, base)
    worker_id = config.id or f"{socket.gethostname()}:{settings.port}"
    hide = secret_filter()
    if settings.token:
        hide.secrets.add(settings.token)
    worker = Worker(worker_id, Metrics(), base_dir=base, secret_filter=hide)
    if config.connectors_dir is not None:
        directory = Path(config.connectors_dir)
        directory = directory if directory.is_absolute() else base / directory
        for problem in worker.load_directory(directory):
            log.error("connector not started: %s", problem)
    store = None
    if config.cluster is not None:
        from connector.cluster import KafkaClusterStore

        cluster = config.cluster
        store = KafkaClusterStore(
            worker,
            cluster.kafka,
            cluster.id,
            config_topic=cluster.config_topic,
            status_topic=cluster.status_topic,
            replication_factor=cluster.replication_factor,
        )
        await store.start()
    runner = await start_server(worker, settings)
    stopping = asyncio.Event()
    _on_signals(lambda _again: stopping.set())
    await stopping.wait()
    if store is not None:
        await store.stop_following()
    await worker.close()
    if store is not None:
        await store.close()
    await runner.cleanup()
    return 0


async def run_hosted(
    config: PipelineConfig,
    types: ObjectTypes,
    config_path: str,
    listen: str | None,
    options: dict[str, Any],
) -> RunSummary:
    """``data-ingest run`` of one connector (named after its file) hosted as a worker hosts
    it: with the REST API when ``listen`` is given, and with ``tasks.max`` tasks. Returns
    once every task ended; the summary adds up those of the tasks."""
    hide = secret_filter()
    token = os.environ.get(TOKEN_ENV) or None
    if token:
        hide.secrets.add(token)
    host, port = parse_listen(listen) if listen else (socket.gethostname(), None)
    worker = Worker(
        f"{host}:{port}" if port else host,
        Metrics(),
        base_dir=Path(config_path).parent,
        single=True,
    )
    worker.secret_filter = hide
    flat = flatten(config.model_dump(mode="json", by_alias=True, exclude_none=True))
    runner = None
    if port is not None:
        runner = await start_server(worker, RestSettings(host=host, port=port, token=token))
    connector = worker.host(Path(config_path).stem, flat, config, types, **options)
    worker.add(connector)

    def stop(abandon: bool) -> None:
        for task in connector.tasks:
            task.request_stop(abandon)

    _on_signals(stop)
    try:
        await connector.ended.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
    summaries = [t.summary for t in connector.tasks]
    if any(s is None for s in summaries):
        return RunSummary(error="the connector was stopped before it ran")
    return RunSummary.combined([s for s in summaries if s is not None])
