"""Pipeline configuration: a YAML file, ``${VAR}`` substitution, validation with pydantic.

Every problem becomes one line ``FILE: key.path: problem`` so that a user can find and fix
it without reading a traceback. The CLI turns ``ConfigError`` into exit status 2.
"""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connector.errors import ConfigError

# Client properties that the connector owns: letting a user override them would break the
# delivery promise (offsets committed only after the backend acks) or the group protocol.
MANAGED_KAFKA_PROPERTIES = {
    "bootstrap.servers": "set it with kafka.bootstrap_servers",
    "group.id": "set it with kafka.group_id",
    "auto.offset.reset": "set it with kafka.auto_offset_reset",
    "enable.auto.commit": "offsets are committed by the connector only after the backend acks",
    "enable.auto.offset.store": "offsets are stored by the connector only after the backend acks",
    "partition.assignment.strategy": (
        "the connector sets it: cooperative-sticky with engine confluent, round-robin with "
        "engine aiokafka"
    ),
}

# Client properties that ``kafka.security`` covers, and the key there that covers each. Given in
# both places they would contradict each other, so that is refused.
SECURITY_KAFKA_PROPERTIES = {
    "security.protocol": "security.protocol",
    "sasl.mechanism": "security.sasl.mechanism",
    "sasl.mechanisms": "security.sasl.mechanism",
    "sasl.username": "security.sasl.username",
    "sasl.password": "security.sasl.password",
    "ssl.ca.location": "security.tls.ca_file",
    "ssl.certificate.location": "security.tls.cert_file",
    "ssl.key.location": "security.tls.key_file",
    "ssl.key.password": "security.tls.key_password",
    "ssl.endpoint.identification.algorithm": "security.tls.check_hostname",
}

# The librdkafka properties that engine aiokafka translates, with the AIOKafkaConsumer keyword
# and value type of each. aiokafka would silently ignore any other property, so others are
# refused for that engine.
AIOKAFKA_PROPERTIES: dict[str, tuple[str, type[int] | type[str] | type[bool]]] = {
    "client.id": ("client_id", str),
    "client.rack": ("client_rack", str),
    "session.timeout.ms": ("session_timeout_ms", int),
    "heartbeat.interval.ms": ("heartbeat_interval_ms", int),
    "max.poll.interval.ms": ("max_poll_interval_ms", int),
    "fetch.min.bytes": ("fetch_min_bytes", int),
    "fetch.max.bytes": ("fetch_max_bytes", int),
    "fetch.wait.max.ms": ("fetch_max_wait_ms", int),
    "max.partition.fetch.bytes": ("max_partition_fetch_bytes", int),
    "metadata.max.age.ms": ("metadata_max_age_ms", int),
    "retry.backoff.ms": ("retry_backoff_ms", int),
    "connections.max.idle.ms": ("connections_max_idle_ms", int),
    "check.crcs": ("check_crcs", bool),
}


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _secret_text(value: Any) -> Any:
    """Refuse a secret that YAML read as a number or boolean, without echoing it."""
    if value is None or isinstance(value, str | SecretStr):
        return value
    raise ValueError(
        "must be a string; quote it in YAML so that it is not read as a number or boolean"
    )


class SaslConfig(_Section):
    """SASL credentials. The password is a SecretStr: never shown in reprs or errors."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    username: str = Field(min_length=1)
    password: SecretStr

    _text = field_validator("password", mode="before")(_secret_text)


class KafkaTlsConfig(_Section):
    """TLS to the brokers: the CA to trust and, for mutual TLS, a client certificate."""

    ca_file: str | None = Field(default=None, min_length=1)
    cert_file: str | None = Field(default=None, min_length=1)
    key_file: str | None = Field(default=None, min_length=1)
    key_password: SecretStr | None = None
    check_hostname: bool = True

    _text = field_validator("key_password", mode="before")(_secret_text)

    @model_validator(mode="after")
    def _pairs(self) -> KafkaTlsConfig:
        if self.cert_file is not None and self.key_file is None:
            raise ValueError(
                "cert_file needs key_file (the private key of the client certificate); "
                "add key_file or remove cert_file"
            )
        if self.key_file is not None and self.cert_file is None:
            raise ValueError(
                "key_file needs cert_file (the client certificate); "
                "add cert_file or remove key_file"
            )
        if self.key_password is not None and self.key_file is None:
            raise ValueError(
                "key_password needs key_file (it decrypts that key); "
                "add key_file or remove key_password"
            )
        return self


class SecurityConfig(_Section):
    """How the engines connect to the brokers: one section, translated for each engine."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl: SaslConfig | None = None
    tls: KafkaTlsConfig | None = None

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> SecurityConfig:
        if self.uses_sasl and self.sasl is None:
            without = "SSL" if self.uses_tls else "PLAINTEXT"
            raise ValueError(
                f"protocol {self.protocol} needs sasl (mechanism, username, password); "
                f"add a sasl section, or use protocol {without} for a listener without SASL"
            )
        if self.sasl is not None and not self.uses_sasl:
            with_sasl = "SASL_SSL" if self.uses_tls else "SASL_SSL (or SASL_PLAINTEXT)"
            raise ValueError(
                f"sasl is set but protocol {self.protocol} sends no credentials; "
                f"use protocol {with_sasl} or remove sasl"
            )
        if self.tls is not None and not self.uses_tls:
            with_tls = "SASL_SSL" if self.uses_sasl else "SSL"
            raise ValueError(
                f"tls is set but protocol {self.protocol} does not use TLS; "
                f"use protocol {with_tls} or remove tls"
            )
        return self


class KafkaConfig(_Section):
    """Where to consume from, with which engine, and as which consumer group.

    ``security`` applies to both engines. ``properties`` are passed through to librdkafka for
    engine confluent; engine aiokafka translates the few listed in ``AIOKAFKA_PROPERTIES`` and
    refuses the others, which it would otherwise silently ignore.
    """

    bootstrap_servers: str = Field(min_length=1)
    engine: Literal["confluent", "aiokafka"] = "confluent"
    group_id: str = Field(default="data-ingest", min_length=1)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    poll_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("properties")
    @classmethod
    def _not_managed(
        cls, value: dict[str, str | int | float | bool], info: ValidationInfo
    ) -> dict[str, str | int | float | bool]:
        engine = info.data.get("engine")
        security = info.data.get("security")
        for key, item in value.items():
            if key in MANAGED_KAFKA_PROPERTIES:
                raise ValueError(
                    f"client property {key!r} is managed by the connector "
                    f"({MANAGED_KAFKA_PROPERTIES[key]}); remove it"
                )
            covered = SECURITY_KAFKA_PROPERTIES.get(key)
            if covered is not None and security is not None and security != SecurityConfig():
                raise ValueError(
                    f"client property {key!r} is also given as kafka.{covered}; "
                    "remove it from properties"
                )
            if covered is not None and engine == "aiokafka":
                raise ValueError(
                    f"client property {key!r} is a security setting; engine aiokafka takes it "
                    f"from kafka.{covered} only, so move it there"
                )
            if engine == "aiokafka":
                _aiokafka_option(key, item)
        return value

    def aiokafka_options(self) -> dict[str, str | int | bool]:
        """``properties`` as AIOKafkaConsumer keyword arguments (validated at load time)."""
        return dict(_aiokafka_option(key, value) for key, value in self.properties.items())


def _aiokafka_option(key: str, value: str | int | float | bool) -> tuple[str, str | int | bool]:
    """The AIOKafkaConsumer keyword and value for one librdkafka property, or a ValueError."""
    if key not in AIOKAFKA_PROPERTIES:
        raise ValueError(
            f"client property {key!r} has no aiokafka equivalent and would be ignored by "
            f"engine aiokafka; remove it or use engine confluent (engine aiokafka understands "
            f"{', '.join(AIOKAFKA_PROPERTIES)})"
        )
    keyword, kind = AIOKAFKA_PROPERTIES[key]
    text = str(value).strip().lower()
    if kind is bool and (isinstance(value, bool) or text in ("true", "false")):
        return keyword, text == "true"
    if kind is int and not isinstance(value, bool | float) and text.isdigit():
        return keyword, int(text)
    if kind is str and isinstance(value, str):
        return keyword, value
    expected = {bool: "true or false", int: "a whole number", str: "a string"}[kind]
    raise ValueError(f"client property {key!r} must be {expected} (got {value!r})")


class RouteConfig(_Section):
    """Which topic (or topics matching a regex) carry which object type, in which format."""

    topic: str | None = Field(default=None, min_length=1)
    topic_regex: str | None = Field(default=None, min_length=1)
    type: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    type_from: Literal["writer_schema"] | None = None
    format: Literal["json", "avro", "avro-raw"] = "json"
    id: Literal["field", "key", "coordinates"] = "field"
    unknown_fields: Literal["reject", "ignore"] | None = None
    writer_schema: str | None = Field(default=None, min_length=1)
    release: Literal["keep", "delete"] = "keep"

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        if (self.topic is None) == (self.topic_regex is None):
            raise ValueError("give exactly one of 'topic' or 'topic_regex'")
        if self.topic_regex is not None:
            try:
                re.compile(self.topic_regex)
            except re.error as exc:
                raise ValueError(f"topic_regex is not a valid regular expression: {exc}") from exc
        if (self.type is None) == (self.type_from is None):
            raise ValueError(
                "give exactly one of 'type' (an object type name) or 'type_from: writer_schema'"
            )
        if self.type_from is not None and self.format != "avro":
            raise ValueError("type_from: writer_schema needs format: avro (a schema registry)")
        if self.unknown_fields is not None and self.format != "json":
            raise ValueError("unknown_fields applies to format: json only")
        if self.writer_schema is not None and self.format != "avro-raw":
            raise ValueError("writer_schema applies to format: avro-raw only")
        return self

    @property
    def subscription(self) -> str:
        """The pattern handed to the Kafka client (librdkafka treats '^' as a regex)."""
        if self.topic is not None:
            return self.topic
        assert self.topic_regex is not None
        return self.topic_regex if self.topic_regex.startswith("^") else "^" + self.topic_regex

    def matches(self, topic: str) -> bool:
        """True when a record of ``topic`` belongs to this route."""
        if self.topic is not None:
            return topic == self.topic
        assert self.topic_regex is not None
        return re.fullmatch(self.topic_regex.lstrip("^").rstrip("$"), topic) is not None


class SqliteBackendConfig(_Section):
    """The embedded default backend: one SQLite file."""

    type: Literal["sqlite"]
    path: str = Field(min_length=1)
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    # How long a batch waits for another process's write lock on the same file.
    busy_timeout_ms: int = Field(default=5_000, ge=0, le=600_000)


class PoolConfig(_Section):
    """Connection pool bounds."""

    min_size: int = Field(default=1, ge=0, le=100)
    max_size: int = Field(default=4, ge=1, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> PoolConfig:
        if self.max_size < self.min_size:
            raise ValueError("max_size must be >= min_size")
        return self


class TlsConfig(_Section):
    """TLS to the database server (libpq's sslmode names)."""

    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file for a client certificate")
        if self.mode in ("verify-ca", "verify-full") and self.ca_file is None:
            raise ValueError(f"mode {self.mode} needs ca_file (the CA that signed the server)")
        return self


class PostgresBackendConfig(_Section):
    """PostgreSQL: one table per object type, COPY + INSERT ... ON CONFLICT per batch."""

    type: Literal["postgres"]
    dsn: str = Field(min_length=1, pattern=r"^postgres(ql)?://")
    db_schema: str = Field(
        default="public", alias="schema", min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$"
    )
    pool: PoolConfig = Field(default_factory=PoolConfig)
    create_tables: bool = True
    tls: TlsConfig | None = None
    command_timeout_ms: int = Field(default=60_000, ge=100)
    # An unreachable server fails open() (retried) after this long instead of hanging.
    connect_timeout_ms: int = Field(default=10_000, ge=100)


class WriteConcernConfig(_Section):
    """MongoDB write concern; the default is durable on a majority of the replica set."""

    w: int | Literal["majority"] = "majority"
    j: bool = True
    wtimeout_ms: int = Field(default=30_000, ge=0)

    @field_validator("w")
    @classmethod
    def _acknowledged(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(
                f"{value} does not wait for acknowledgement, but offsets are committed only "
                "after durable writes; use majority (or 1 without a replica set)"
            )
        return value


class TimeSeriesConfig(_Section):
    """Options of a MongoDB time-series collection for one asymmetric type."""

    time_field: str = Field(min_length=1)
    meta_field: str | None = None
    granularity: Literal["seconds", "minutes", "hours"] = "seconds"

    @model_validator(mode="after")
    def _distinct_fields(self) -> TimeSeriesConfig:
        if self.meta_field in ("_id", self.time_field):
            raise ValueError(
                f"meta_field {self.meta_field!r} cannot be _id or the time_field; choose the "
                "field that identifies the series, e.g. a link to its sensor"
            )
        return self


class MongoBackendConfig(_Section):
    """MongoDB (or a wire-compatible server): one collection per object type."""

    type: Literal["mongodb"]
    uri: str = Field(min_length=1, pattern=r"^mongodb(\+srv)?://")
    database: str = Field(min_length=1)
    write_concern: WriteConcernConfig = Field(default_factory=WriteConcernConfig)
    timeseries: dict[str, TimeSeriesConfig] = Field(default_factory=dict)
    decimals: Literal["decimal128", "string"] = "decimal128"
    # How long open() and a write wait for a reachable server before a retryable error.
    server_selection_timeout_ms: int = Field(default=5_000, ge=100)


BackendConfig = Annotated[
    Union[SqliteBackendConfig, PostgresBackendConfig, MongoBackendConfig],  # noqa: UP007
    Field(discriminator="type"),
]


class BatchingConfig(_Section):
    """When a batch is handed to the backend, and how much may be in flight at once."""

    max_records: int = Field(default=2000, ge=1, le=1_000_000)
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_wait_ms: int = Field(default=500, ge=0, le=600_000)
    max_in_flight_batches: int = Field(default=2, ge=1, le=64)


class CommitConfig(_Section):
    """How often acked offsets are committed (also on revoke and on shutdown)."""

    interval_ms: int = Field(default=1000, ge=10, le=600_000)


class RetryConfig(_Section):
    """Backoff for transient backend failures. Nothing is committed while retrying."""

    initial_backoff_ms: int = Field(default=200, ge=1)
    max_backoff_ms: int = Field(default=30_000, ge=1)
    multiplier: float = Field(default=2.0, ge=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError("max_backoff_ms must be >= initial_backoff_ms")
        return self


class ShutdownConfig(_Section):
    """How long SIGINT/SIGTERM may take before the in-flight batch is abandoned."""

    timeout_ms: int = Field(default=30_000, ge=0, le=3_600_000)


class SchemasConfig(_Section):
    """Where the object types are declared (``.avsc`` files)."""

    dir: str = Field(min_length=1)


class SchemaRegistryConfig(_Section):
    """A Confluent-compatible Schema Registry, for routes with ``format: avro``."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    basic_auth_user_info: str | None = Field(default=None, pattern=r"^[^:]+:.*$")
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def client_settings(self) -> dict[str, Any]:
        """Settings for confluent-kafka's SchemaRegistryClient."""
        settings: dict[str, Any] = dict(self.properties)
        settings["url"] = self.url
        if self.basic_auth_user_info is not None:
            settings["basic.auth.user.info"] = self.basic_auth_user_info
        return settings


class ReleaseConfig(_Section):
    """How often routes with ``release: delete`` delete their synced records from the topic."""

    interval_ms: int = Field(default=60_000, ge=100)


class DeadLetterQueueConfig(_Section):
    """The dead-letter topic: where failing records go with ``errors.tolerance: all``."""

    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=1, ge=1, le=10_000)
    replication_factor: int = Field(default=-1, ge=-1, le=32)  # -1: the broker's default
    create: bool = True  # create the topic at start-up when it is missing
    context_headers: bool = True  # add the __connect.errors.* and __data_ingest.* headers
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000, le=600_000)


class ErrorsConfig(_Section):
    """What a record error does.

    ``tolerance: none`` stops the run at the failing record; ``all`` sends it to the
    dead-letter topic and goes on. A conflict is logged (``report``), stops the run
    (``stop``) or is dead-lettered (``dlq``). ``max_failure_ratio`` over the last
    ``failure_window`` records stops a run in which most records fail.
    """

    tolerance: Literal["none", "all"] = "none"
    conflict: Literal["report", "stop", "dlq"] = "report"
    dead_letter_queue: DeadLetterQueueConfig | None = None
    max_failure_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    failure_window: int = Field(default=1000, ge=10, le=1_000_000)

    @model_validator(mode="after")
    def _needs_topic(self) -> ErrorsConfig:
        if self.dead_letter_queue is None and self.tolerance == "all":
            raise ValueError(
                "tolerance: all needs a dead_letter_queue section with its topic "
                "(failing records go there, never nowhere)"
            )
        if self.dead_letter_queue is None and self.conflict == "dlq":
            raise ValueError("conflict: dlq needs a dead_letter_queue section with its topic")
        return self


class PipelineConfig(_Section):
    """The whole pipeline file."""

    kafka: KafkaConfig
    schemas: SchemasConfig
    schema_registry: SchemaRegistryConfig | None = None
    routes: list[RouteConfig] = Field(min_length=1)
    backend: BackendConfig
    errors: ErrorsConfig = Field(default_factory=ErrorsConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    commit: CommitConfig = Field(default_factory=CommitConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)

    @model_validator(mode="after")
    def _distinct_topics(self) -> PipelineConfig:
        if self.schema_registry is None and any(r.format == "avro" for r in self.routes):
            raise ValueError(
                "a route has format: avro, which needs a schema_registry section with its url"
            )
        seen: set[str] = set()
        for route in self.routes:
            if route.topic is not None:
                if route.topic in seen:
                    raise ValueError(f"topic {route.topic!r} is routed twice; keep one route")
                seen.add(route.topic)
        return self

    def route_for(self, topic: str) -> RouteConfig | None:
        """The first route whose topic or regex matches ``topic``."""
        for route in self.routes:
            if route.matches(topic):
                return route
        return None


# --- loading -------------------------------------------------------------------------------

_ENV_PATTERN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would otherwise drop silently."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _format_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def substitute_env(
    value: Any, env: typing.Mapping[str, str], path: tuple[str | int, ...] = ()
) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    ``$$`` stands for a literal ``$``. Raises ``ValueError`` lines naming the key path of any
    variable that is unset and has no default.
    """
    problems: list[str] = []

    def walk(node: Any, loc: tuple[str | int, ...]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*loc, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*loc, i)) for i, v in enumerate(node)]
        if isinstance(node, str):

            def repl(match: re.Match[str]) -> str:
                if match.group(0) == "$$":
                    return "$"
                name, default = match.group(1), match.group(2)
                if name in env:
                    return env[name]
                if default is not None:
                    return default
                problems.append(
                    f"{_format_path(loc)}: environment variable {name} is not set; "
                    f"export it or give a default as ${{{name}:-value}}"
                )
                return match.group(0)

            return _ENV_PATTERN.sub(repl, node)
        return node

    result = walk(value, path)
    if problems:
        raise ValueError("\n".join(problems))
    return result


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated/Optional wrappers to reach the model or container type."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_at(loc: tuple[str | int, ...]) -> tuple[type[BaseModel] | None, tuple[str | int, ...]]:
    """Follow an error location through the models; returns the model and the display path.

    Discriminated unions put the tag into the location; it is dropped from the display path.
    """
    current: Any = PipelineConfig
    shown: list[str | int] = []
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _field_by_key(current, str(part))
            if field is None and part == _tag_of(current):
                continue  # the tag of a discriminated union with a single member
            shown.append(part)
            if field is None:
                return None, tuple(shown + parts)
            current = field.annotation
        elif origin in (list, dict):
            shown.append(part)
            current = typing.get_args(current)[-1]
        elif origin in (Union, types.UnionType):
            members = [_unwrap(a) for a in typing.get_args(current)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            tagged = [m for m in models if _tag_of(m) == part]
            if tagged:
                current = tagged[0]
            else:
                shown.append(part)
                current = None
        else:
            shown.append(part)
            current = None
    current = _unwrap(current)
    model = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return model, tuple(shown)


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a user writes for a model: aliases where a field has one."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f
    return None


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return str(args[0]) if args else None


def _describe(error: Any) -> str:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        parent, shown_parent = _model_at(loc[:-1])
        path = _format_path((*shown_parent, loc[-1]))
        allowed = ", ".join(_keys(parent)) if parent else ""
        hint = f"; allowed keys here: {allowed}" if allowed else ""
        return f"{path}: unknown key{hint}"
    _, shown = _model_at(loc)
    path = _format_path(shown)
    if kind == "missing":
        return f"{path}: missing value; this key is required"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return (
            f"{path}.type: unknown type {ctx.get('tag')!r}; use one of {ctx.get('expected_tags')}"
        )
    if kind == "union_tag_not_found":
        return f"{path}.type: missing value; say which backend, e.g. type: sqlite"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{path}: expected a mapping of keys, got {type(error['input']).__name__}"
    if kind == "list_type":
        return f"{path}: expected a list, got {type(error['input']).__name__}"
    if kind == "too_short" and isinstance(error.get("input"), list):
        return f"{path}: needs at least {error['ctx']['min_length']} entry"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if "input" in error and kind not in ("value_error", "model_type", "dict_type", "list_type"):
        return f"{path}: {message} (got {error['input']!r})"
    return f"{path}: {message}"


def parse_config(
    data: Any, source: str, env: typing.Mapping[str, str] | None = None
) -> PipelineConfig:
    """Validate an already-parsed YAML tree; ``source`` names the file in error messages."""
    if not isinstance(data, dict):
        raise ConfigError(
            source, ["(top level): expected a mapping of sections (kafka, routes, ...)"]
        )
    try:
        data = substitute_env(data, os.environ if env is None else env)
    except ValueError as exc:
        raise ConfigError(source, str(exc).splitlines()) from None
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def load_config(path: str | Path, env: typing.Mapping[str, str] | None = None) -> PipelineConfig:
    """Read, substitute and validate the pipeline file at ``path``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from None
    return relative_to(parse_config(data, source, env), Path(path).parent)


def relative_to(config: PipelineConfig, base: Path) -> PipelineConfig:
    """Resolve the schema paths of ``config`` against ``base`` (the pipeline file's folder).

    Schemas ship with the pipeline file, so they are found next to it wherever the
    connector is started from.
    """

    def resolve(path: str) -> str:
        return path if Path(path).is_absolute() else str(base / path)

    routes = [
        r.model_copy(update={"writer_schema": resolve(r.writer_schema)}) if r.writer_schema else r
        for r in config.routes
    ]
    schemas = config.schemas.model_copy(update={"dir": resolve(config.schemas.dir)})
    return config.model_copy(update={"schemas": schemas, "routes": routes})
