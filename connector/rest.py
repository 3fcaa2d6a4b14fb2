"""The Kafka Connect compatible REST API, plus ``/ping``, ``/ready`` and ``/metrics``.

Paths, JSON shapes, status codes and error bodies (``{"error_code", "message"}``) follow
Kafka Connect's, so Connect tooling works against a worker unchanged. It runs on the
worker's event loop (aiohttp). Configs leave the worker with their secrets redacted.
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from connector.connect_config import (
    CONNECT_KEYS,
    PLUGIN_ALIASES,
    PLUGIN_CLASS,
    connect_problems,
    flat_key_problem,
    normalize,
    pipeline_of,
    plugin_info,
    redact,
    scrub,
    secret_values,
)
from connector.errors import ConfigError, ConnectorError
from connector.mapping import checked_types
from connector.metrics import package_version
from connector.plugins import list_plugins
from connector.worker import ApiError, HostedConnector, Worker

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = {"/ping", "/health"}
HEALTHY = "Worker has completed startup and is ready to handle requests."
ALTERED = "The offsets for this connector have been altered successfully"  # Connect's sink wording
RESET = "The offsets for this connector have been reset successfully"


@dataclass(frozen=True)
class RestSettings:
    """Where and how the API listens."""

    host: str = "127.0.0.1"
    port: int = 8083
    token: str | None = None  # required as "Authorization: Bearer ..." for mutating calls
    token_for_reads: bool = False  # ... and for every call except /ping and /health
    cert_file: str | None = None
    key_file: str | None = None
    cluster_id: str | None = None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); raises ValueError naming the problem."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8083")
    return host.strip("[]"), int(port)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error_code": status, "message": message}, status=status)


def _auth_middleware(settings: RestSettings) -> Any:
    token = settings.token

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        mutating = request.method not in ("GET", "HEAD", "OPTIONS") and not (
            request.path.endswith("/config/validate")  # a PUT that changes nothing
        )
        needed = mutating or (settings.token_for_reads and request.path not in OPEN_PATHS)
        if token is not None and needed:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
                response = _error(
                    401,
                    "this call needs the worker's REST token as 'Authorization: Bearer TOKEN'",
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    return check


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        return _error(exc.status, f"{message}: {request.method} {request.path}")
    except Exception as exc:
        log.exception("REST %s %s failed", request.method, request.path)
        return _error(500, f"{type(exc).__name__}: {exc}")


async def _json(request: web.Request) -> Any:
    text = await request.text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false"):
        raise ApiError(400, f"query parameter {name}: expected true or false, got {value!r}")
    return value == "true"


class RestApi:
    """The routes, bound to one worker."""

    def __init__(self, worker: Worker, settings: RestSettings) -> None:
        self.worker = worker
        self.settings = settings

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors, _auth_middleware(self.settings)])
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/health", self.health)
        r.add_get("/ping", self.ping)
        r.add_get("/ready", self.ready)
        r.add_get("/metrics", self.metrics)
        r.add_get("/connectors", self.list_connectors)
        r.add_post("/connectors", self.create)
        r.add_get("/connectors/{name}", self.get_connector)
        r.add_delete("/connectors/{name}", self.delete)
        r.add_get("/connectors/{name}/config", self.get_config)
        r.add_put("/connectors/{name}/config", self.put_config)
        r.add_patch("/connectors/{name}/config", self.patch_config)
        r.add_get("/connectors/{name}/status", self.status)
        r.add_put("/connectors/{name}/pause", self.pause)
        r.add_put("/connectors/{name}/resume", self.resume)
        r.add_put("/connectors/{name}/stop", self.stop)
        r.add_post("/connectors/{name}/restart", self.restart)
        r.add_get("/connectors/{name}/tasks", self.tasks)
        r.add_get("/connectors/{name}/tasks/{task}/status", self.task_status)
        r.add_post("/connectors/{name}/tasks/{task}/restart", self.restart_task)
        r.add_get("/connectors/{name}/topics", self.topics)
        r.add_put("/connectors/{name}/topics/reset", self.reset_topics)
        r.add_get("/connectors/{name}/offsets", self.get_offsets)
        r.add_patch("/connectors/{name}/offsets", self.alter_offsets)
        r.add_delete("/connectors/{name}/offsets", self.reset_offsets)
        r.add_get("/connector-plugins", self.plugins)
        r.add_put("/connector-plugins/{plugin}/config/validate", self.validate)
        return app

    # --- worker --------------------------------------------------------------------------

    async def root(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": package_version(),
                "commit": "",
                "kafka_cluster_id": self.settings.cluster_id,
            }
        )

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "message": HEALTHY})

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, _: web.Request) -> web.Response:
        reasons = await self.worker.readiness()
        return web.json_response(
            {"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200
        )

    async def metrics(self, _: web.Request) -> web.Response:
        body = self.worker.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def plugins(self, request: web.Request) -> web.Response:
        """The connector plugin; with ``?connectorsOnly=false`` (as in Connect) also every
        backend and format found through entry points, with its version."""
        found = [plugin_info()]
        if request.query.get("connectorsOnly", "true").lower() == "false":
            found += [plugin.connect() for plugin in list_plugins()]
        return web.json_response(found)

    # --- connectors ----------------------------------------------------------------------

    def _connector(self, request: web.Request) -> HostedConnector:
        return self.worker.get(request.match_info["name"])

    async def list_connectors(self, request: web.Request) -> web.Response:
        names = sorted(self.worker.connectors)
        expand = request.query.getall("expand", [])
        if not expand:
            return web.json_response(names)
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            entry: dict[str, Any] = {}
            if "status" in expand:
                entry["status"] = self.worker.status(name)
            if "info" in expand:
                entry["info"] = self.worker.info(name)
            out[name] = entry
        return web.json_response(out)

    async def create(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object {name, config}")
        unknown = sorted(set(body) - {"name", "config", "initial_state"})
        if unknown:
            raise ApiError(
                400,
                f"unknown key(s) in the request body: {', '.join(unknown)}; "
                "allowed: name, config, initial_state",
            )
        config = body.get("config")
        if not isinstance(config, dict):
            raise ApiError(400, "config: a JSON object of connector settings is required")
        name = str(body.get("name") or config.get("name") or "").strip()
        if not name or "/" in name:
            raise ApiError(400, "name: the connector name is required and may not contain '/'")
        target = str(body.get("initial_state") or "RUNNING").upper()
        if target not in ("RUNNING", "PAUSED", "STOPPED"):
            raise ApiError(400, "initial_state: expected RUNNING, PAUSED or STOPPED")
        connector = await self.worker.create(name, _invalid_as_400(config), target)
        return web.json_response(
            self.worker.info(connector.name),
            status=201,
            headers={"Location": f"/connectors/{name}"},
        )

    async def get_connector(self, request: web.Request) -> web.Response:
        return web.json_response(self.worker.info(self._connector(request).name))

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self._connector(request).shown_config())

    async def put_config(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object of connector settings")
        _, created = await self.worker.put_config(name, _invalid_as_400(body))
        status = 201 if created else 200
        headers = {"Location": f"/connectors/{name}"} if created else None
        return web.json_response(self.worker.info(name), status=status, headers=headers)

    async def patch_config(self, request: web.Request) -> web.Response:
        """KIP-477: merge the given keys into the config; a null value removes its key."""
        connector = self._connector(request)
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object of connector settings")
        patch = _invalid_as_400(body)
        merged: dict[str, Any] = dict(connector.flat)
        for key, value in normalize({k: v for k, v in patch.items() if v is not None}).items():
            merged[key] = value
        for key in (k for k, v in patch.items() if v is None):
            merged.pop(key, None)
        updated, _ = await self.worker.put_config(connector.name, merged)
        return web.json_response(self.worker.info(updated.name))

    async def delete(self, request: web.Request) -> web.Response:
        await self.worker.delete(request.match_info["name"])
        return web.Response(status=204)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.worker.status(request.match_info["name"]))

    async def pause(self, request: web.Request) -> web.Response:
        await self.worker.set_target(request.match_info["name"], "PAUSED")
        return web.Response(status=202)

    async def resume(self, request: web.Request) -> web.Response:
        await self.worker.set_target(request.match_info["name"], "RUNNING")
        return web.Response(status=202)

    async def stop(self, request: web.Request) -> web.Response:
        await self.worker.set_target(request.match_info["name"], "STOPPED")
        return web.Response(status=202)

    async def restart(self, request: web.Request) -> web.Response:
        connector = self._connector(request)
        include_tasks, only_failed = _flag(request, "includeTasks"), _flag(request, "onlyFailed")
        await self.worker.restart(connector.name, only_failed=only_failed)
        if not include_tasks and not only_failed:
            return web.Response(status=204)
        return web.json_response(self.worker.status(connector.name), status=202)

    def _cluster_task(self, request: web.Request) -> dict[str, Any]:
        connector = self._connector(request)
        return self.worker.cluster_task(connector.name, request.match_info["task"])

    async def tasks(self, request: web.Request) -> web.Response:
        connector = self._connector(request)
        config = connector.shown_config()
        return web.json_response(
            [
                {"id": {"connector": connector.name, "task": t["id"]}, "config": config}
                for t in self.worker.cluster_tasks(connector.name)
            ]
        )

    async def task_status(self, request: web.Request) -> web.Response:
        task = self._cluster_task(request)
        return web.json_response({k: v for k, v in task.items() if k != "local_id"})

    async def restart_task(self, request: web.Request) -> web.Response:
        connector = self._connector(request)
        await self.worker.restart(
            connector.name, only_failed=False, task_id=request.match_info["task"]
        )
        return web.Response(status=204)

    async def topics(self, request: web.Request) -> web.Response:
        connector = self._connector(request)
        return web.json_response({connector.name: {"topics": connector.topics()}})

    async def reset_topics(self, request: web.Request) -> web.Response:
        self._connector(request).reset_topics()
        return web.Response(status=202)

    # --- offsets -------------------------------------------------------------------------

    async def get_offsets(self, request: web.Request) -> web.Response:
        return web.json_response(await self.worker.offsets(request.match_info["name"]))

    async def alter_offsets(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.worker.get(name)
        body = await _json(request)
        offsets = _offsets_request(body)
        await self.worker.alter_offsets(name, offsets)
        return web.json_response({"message": ALTERED})

    async def reset_offsets(self, request: web.Request) -> web.Response:
        await self.worker.reset_offsets(request.match_info["name"])
        return web.json_response({"message": RESET})

    # --- validation ----------------------------------------------------------------------

    async def validate(self, request: web.Request) -> web.Response:
        plugin = request.match_info["plugin"]
        if plugin not in PLUGIN_ALIASES:
            raise ApiError(
                404,
                f"Failed to find any class that implements Connector and which name matches "
                f"{plugin}; this worker has {PLUGIN_CLASS}",
            )
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object of connector settings")
        flat = normalize(body)
        given = flat.get("connector.class")
        if given is not None and given not in PLUGIN_ALIASES:
            raise ApiError(
                400,
                f"Included connector type {given} does not match request type {plugin}",
            )
        return web.json_response(validation(flat, self.worker))


def _invalid_as_400(config: dict[str, Any]) -> dict[str, Any]:
    for key, value in config.items():
        if not isinstance(key, str):
            raise ApiError(400, f"config: key {key!r} is not a string")
        if isinstance(value, float) and value != value:
            raise ApiError(400, f"config: {key}: NaN is not a value")
    return config


def _offsets_request(body: Any) -> dict[tuple[str, int], int | None]:
    """KIP-875's ``{"offsets": [{"partition": {...}, "offset": {...}}]}`` for a sink."""
    entries = body.get("offsets") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ApiError(400, "Partitions / offsets need to be provided for an alter offsets request")
    offsets: dict[tuple[str, int], int | None] = {}
    for i, entry in enumerate(entries):
        where = f"offsets[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("partition"), dict):
            raise ApiError(400, f"{where}: expected {{partition: {{...}}, offset: {{...}}}}")
        partition = entry["partition"]
        topic, number = partition.get("kafka_topic"), partition.get("kafka_partition")
        if not isinstance(topic, str) or not topic:
            raise ApiError(400, f"{where}.partition.kafka_topic: a topic name is required")
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ApiError(
                400, f"{where}.partition.kafka_partition: a partition number (>= 0) is required"
            )
        offset = entry.get("offset")
        if offset is None:
            offsets[(topic, number)] = None
            continue
        value = offset.get("kafka_offset") if isinstance(offset, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ApiError(
                400, f"{where}.offset.kafka_offset: an offset (>= 0) is required, or offset: null"
            )
        offsets[(topic, number)] = value
    return offsets


def validation(flat: dict[str, str], worker: Worker) -> dict[str, Any]:
    """Connect's ConfigInfos for ``flat``: one entry per given key, errors by key."""
    name = flat.get("name", "validate")
    errors: dict[str, list[str]] = {}
    try:
        problems = connect_problems(name, flat)
        if not problems:
            config = pipeline_of(name, flat, worker.base_dir)
            checked_types(config, name)
    except ConfigError as exc:
        problems = [flat_key_problem(p) for p in exc.problems]
    hidden = secret_values(flat)
    for problem in problems:
        key, sep, message = scrub(problem, hidden).partition(": ")
        errors.setdefault(key if sep else "(top level)", []).append(message if sep else problem)
    shown = redact(flat)
    keys = [*flat, *(k for k in errors if k not in flat)]
    configs: list[dict[str, Any]] = []
    for order, key in enumerate(keys, start=1):
        group = "Connect" if key in CONNECT_KEYS else key.split(".", 1)[0]
        configs.append(
            {
                "definition": {
                    "name": key,
                    "type": "STRING",
                    "required": False,
                    "default_value": None,
                    "importance": "HIGH",
                    "documentation": "",
                    "group": group,
                    "order_in_group": order,
                    "width": "NONE",
                    "display_name": key,
                    "dependents": [],
                },
                "value": {
                    "name": key,
                    "value": shown.get(key),
                    "recommended_values": [],
                    "errors": errors.get(key, []),
                    "visible": True,
                },
            }
        )
    return {
        "name": PLUGIN_CLASS,
        "error_count": sum(len(v) for v in errors.values()),
        "groups": sorted({str(c["definition"]["group"]) for c in configs}),
        "configs": configs,
    }


async def start_server(worker: Worker, settings: RestSettings) -> web.AppRunner:
    """Serve the API on the running event loop; ``await runner.cleanup()`` stops it."""
    context: ssl.SSLContext | None = None
    if settings.cert_file is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.cert_file, settings.key_file)
    runner = web.AppRunner(RestApi(worker, settings).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConnectorError(
            f"the REST API cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}; choose another address (rest.listen / --rest-listen)"
        ) from None
    scheme = "https" if context else "http"
    log.info("REST API on %s://%s:%d", scheme, settings.host, settings.port)
    return runner
