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
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connector.errors import ConfigError

BUILTIN_FORMATS = ("json", "avro", "avro-raw")
BUILTIN_BACKENDS = ("sqlite", "postgres", "mongodb")
PLUGIN_TAG = "plugin"

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

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


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
    """The SASL mechanism the listener expects."""
    username: str = Field(min_length=1)
    """The SASL user name."""
    password: SecretStr
    """The SASL password; a secret, never logged or shown in errors."""

    _text = field_validator("password", mode="before")(_secret_text)


class KafkaTlsConfig(_Section):
    """TLS to the brokers: the CA to trust and, for mutual TLS, a client certificate."""

    ca_file: str | None = Field(default=None, min_length=1)
    """PEM file of the CA that signed the brokers' certificates (default: the system's)."""
    cert_file: str | None = Field(default=None, min_length=1)
    """PEM client certificate, for mutual TLS (needs key_file)."""
    key_file: str | None = Field(default=None, min_length=1)
    """PEM private key of the client certificate (needs cert_file)."""
    key_password: SecretStr | None = None
    """Password of an encrypted key_file; a secret, never logged."""
    check_hostname: bool = True
    """Check that a broker's certificate names the host connected to."""

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
    """How to talk to the brokers: plain, TLS, SASL, or SASL over TLS."""
    sasl: SaslConfig | None = None
    """SASL credentials; required by the SASL_* protocols, refused by the others."""
    tls: KafkaTlsConfig | None = None
    """TLS settings; only with the SSL and SASL_SSL protocols."""

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
    """Comma-separated host:port list of brokers to bootstrap from."""
    engine: Literal["confluent", "aiokafka"] = "confluent"
    """The Kafka client: confluent (librdkafka) or aiokafka. One group uses one engine."""
    group_id: str = Field(default="data-ingest", min_length=1)
    """The consumer group: the connector's identity; replicas share it."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a new group starts on each partition."""
    poll_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    """How long one fetch waits for records."""
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    """Security settings, translated for either engine."""
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Client properties: librdkafka properties for engine confluent; engine aiokafka translates a
    listed few and refuses the rest. Offsets, group and assignment settings are managed by the
    connector and refused.
    """

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
        """``properties`` as AIOKafkaConsumer keyword arguments (validated at load time),
        over the defaults we choose."""
        chosen = {**CONSUMER_DEFAULTS, **self.properties}
        return dict(_aiokafka_option(key, value) for key, value in chosen.items())


CONSUMER_DEFAULTS: dict[str, int] = {"heartbeat.interval.ms": 1000}
"""Client defaults of ours for both engines, below ``kafka.properties``. A heartbeat every
second (the clients' default: 3 s) is how soon a member learns of a rebalance; each one
waits for every member's next heartbeat, so a task or worker that joins or leaves a busy
group moves partitions in ~2 s instead of ~6 s (a rebalance takes two rounds)."""


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
    """The topic this route reads (or give topic_regex)."""
    topic_regex: str | None = Field(default=None, min_length=1)
    """A regular expression for the topics this route reads (or give topic)."""
    type: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    """The declared object type every record of the route is mapped onto."""
    type_from: Literal["writer_schema"] | None = None
    """writer_schema: the type is named by each record's Avro writer schema (format avro)."""
    format: str = Field(default="json", min_length=1, examples=list(BUILTIN_FORMATS))
    """How record values are decoded: json, avro (Confluent wire format with a Schema Registry),
    avro-raw, or the name of an installed format plugin.
    """
    id: Literal["field", "key", "coordinates"] = "field"
    """Where the object's _id comes from: field (the record's _id, else derived from the
    coordinates), key (the record key) or coordinates (always derived; rule R10).
    """
    unknown_fields: Literal["reject", "ignore"] | None = None
    """format json only: what a field the type does not declare does (default reject)."""
    writer_schema: str | None = Field(default=None, min_length=1)
    """format avro-raw only: .avsc file of the writer schema (default: the type itself)."""
    release: Literal["keep", "delete"] = "keep"
    """keep the records in the topic, or delete them once committed (DeleteRecords)."""

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
    """sqlite: the embedded backend."""
    path: str = Field(min_length=1)
    """The SQLite file; created with its tables if missing."""
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    """SQLite's synchronous pragma; FULL makes every acked batch durable."""
    busy_timeout_ms: int = Field(default=5_000, ge=0, le=600_000)
    """How long a batch waits for another process's write lock on the file."""


class PoolConfig(_Section):
    """Connection pool bounds."""

    min_size: int = Field(default=1, ge=0, le=100)
    """Connections kept open."""
    max_size: int = Field(default=4, ge=1, le=100)
    """Connections at most."""

    @model_validator(mode="after")
    def _ordered(self) -> PoolConfig:
        if self.max_size < self.min_size:
            raise ValueError("max_size must be >= min_size")
        return self


class TlsConfig(_Section):
    """TLS to the database server (libpq's sslmode names)."""

    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    """libpq's sslmode."""
    ca_file: str | None = None
    """PEM file of the CA that signed the server (needed by verify-ca and verify-full)."""
    cert_file: str | None = None
    """PEM client certificate (with key_file)."""
    key_file: str | None = None
    """PEM private key of the client certificate (with cert_file)."""

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
    """postgres: PostgreSQL 13 or newer."""
    dsn: str = Field(min_length=1, pattern=r"^postgres(ql)?://")
    """libpq connection URI, postgresql://user:password@host:port/db; the password is never logged.

    """
    db_schema: str = Field(
        default="public", alias="schema", min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$"
    )
    """The database schema of the tables; created if missing (with create_tables)."""
    pool: PoolConfig = Field(default_factory=PoolConfig)
    """Bounds of the connection pool to the server."""
    create_tables: bool = True
    """Create missing tables and add new nullable or defaulted columns at start-up."""
    tls: TlsConfig | None = None
    """TLS to the server."""
    command_timeout_ms: int = Field(default=60_000, ge=100)
    """How long one SQL command may take."""
    connect_timeout_ms: int = Field(default=10_000, ge=100)
    """An unreachable server fails the connection (retried) after this long."""


class WriteConcernConfig(_Section):
    """MongoDB write concern; the default is durable on a majority of the replica set."""

    w: int | Literal["majority"] = "majority"
    """How many replica set members acknowledge a write: majority or a number >= 1."""
    j: bool = True
    """Wait for the journal, so an acked write survives a crash."""
    wtimeout_ms: int = Field(default=30_000, ge=0)
    """How long to wait for the acknowledgement before a retryable error."""

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
    """The timestamp field of the type."""
    meta_field: str | None = None
    """The field that identifies a series (e.g. a link to its sensor)."""
    granularity: Literal["seconds", "minutes", "hours"] = "seconds"
    """MongoDB's bucketing granularity."""

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
    """mongodb: MongoDB or a wire-compatible server (FerretDB)."""
    uri: str = Field(min_length=1, pattern=r"^mongodb(\+srv)?://")
    """mongodb:// or mongodb+srv:// connection string; the password is never logged."""
    database: str = Field(min_length=1)
    """The database of the collections."""
    write_concern: WriteConcernConfig = Field(default_factory=WriteConcernConfig)
    """Write concern of every write; the default is durable on a majority."""
    timeseries: dict[str, TimeSeriesConfig] = Field(default_factory=dict)
    """Time-series collections, by asymmetric type name (MongoDB 7.0 or later)."""
    decimals: Literal["decimal128", "string"] = "decimal128"
    """How decimals are stored: Decimal128 or text (FerretDB needs string)."""
    server_selection_timeout_ms: int = Field(default=5_000, ge=100)
    """How long to wait for a reachable server before a retryable error."""


class PluginBackendConfig(_Section):
    """A backend from an installed plugin (entry point group ``data_ingest.backends``).

    Its other keys are the plugin's own settings, checked by the plugin's settings model.
    """

    model_config = ConfigDict(
        extra="allow", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )

    type: str = Field(min_length=1, json_schema_extra={"not": {"enum": list(BUILTIN_BACKENDS)}})
    """The plugin's name, as `data-ingest plugins` lists it; its settings go next to it."""

    @property
    def settings(self) -> dict[str, Any]:
        """The plugin's own keys: everything in the section but ``type``."""
        return dict(self.model_extra or {})


def _backend_tag(value: Any) -> str | None:
    """The union member for a backend section: a built-in's name, else the plugin member."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None:
        return None
    return kind if kind in BUILTIN_BACKENDS else PLUGIN_TAG


BackendConfig = Annotated[
    Union[  # noqa: UP007
        Annotated[SqliteBackendConfig, Tag("sqlite")],
        Annotated[PostgresBackendConfig, Tag("postgres")],
        Annotated[MongoBackendConfig, Tag("mongodb")],
        Annotated[PluginBackendConfig, Tag(PLUGIN_TAG)],
    ],
    Discriminator(_backend_tag),
]


class BatchingConfig(_Section):
    """When a batch is handed to the backend, and how much may be in flight at once."""

    max_records: int = Field(default=2000, ge=1, le=1_000_000)
    """A batch closes at this many objects."""
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """A batch closes at this many bytes of record values."""
    max_wait_ms: int = Field(default=500, ge=0, le=600_000)
    """A batch closes this long after its first object."""
    max_in_flight_batches: int = Field(default=2, ge=1, le=64)
    """Closed batches that may wait for the backend before partitions are paused."""
    max_concurrent_writes: int = Field(default=1, ge=1, le=16)
    """Batches written at once, each on its own connection, where the backend can
    (PostgreSQL: up to ``backend.pool.max_size``; others write one at a time). 1 writes
    in order: a failing record stops the run before any later batch is written. With more,
    one batch's round trips and commit overlap the next one's; a failing record still stops
    the run and nothing past it is committed, but batches already in the backend finish
    (their records are read again after the restart and counted as duplicates)."""


class CommitConfig(_Section):
    """How often acked offsets are committed (also on revoke and on shutdown)."""

    interval_ms: int = Field(default=1000, ge=10, le=600_000)
    """How often acked offsets are committed."""


class RetryConfig(_Section):
    """Backoff for transient backend failures. Nothing is committed while retrying."""

    initial_backoff_ms: int = Field(default=200, ge=1)
    """The first wait after a transient failure."""
    max_backoff_ms: int = Field(default=30_000, ge=1)
    """The longest wait between two attempts."""
    multiplier: float = Field(default=2.0, ge=1.0)
    """Each wait is this many times the previous one (with jitter)."""

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError("max_backoff_ms must be >= initial_backoff_ms")
        return self


class ShutdownConfig(_Section):
    """How long SIGINT/SIGTERM may take before the in-flight batch is abandoned."""

    timeout_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    """Bounds the whole shutdown, and a revoke's wait for the batch in the backend."""


class SchemasConfig(_Section):
    """Where the object types are declared (``.avsc`` files)."""

    dir: str = Field(min_length=1)
    """Folder of the .avsc files declaring the object types; relative to the pipeline file."""


class SchemaRegistryConfig(_Section):
    """A Confluent-compatible Schema Registry, for routes with ``format: avro``."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    """Base URL of a Confluent-compatible Schema Registry."""
    basic_auth_user_info: str | None = Field(default=None, pattern=r"^[^:]+:.*$")
    """user:password for HTTP basic authentication; a secret, never logged."""
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Further settings passed to confluent-kafka's SchemaRegistryClient."""

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
    """At most one DeleteRecords per this interval (routes with release: delete)."""


class DeadLetterQueueConfig(_Section):
    """The dead-letter topic: where failing records go with ``errors.tolerance: all``."""

    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """The dead-letter topic's name."""
    partitions: int = Field(default=1, ge=1, le=10_000)
    """Partitions of the dead-letter topic when the connector creates it."""
    replication_factor: int = Field(default=-1, ge=-1, le=32)
    """Replication factor when the connector creates it; -1: the broker's default."""
    create: bool = True
    """Create the topic at start-up when it is missing (false: a missing topic stops the run)."""
    context_headers: bool = True
    """Add Kafka Connect's __connect.errors.* headers and our __data_ingest.* headers."""
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000, le=600_000)
    """How long one dead-letter produce may take before it is retried like an outage."""


class ErrorsConfig(_Section):
    """What a record error does.

    ``tolerance: none`` stops the run at the failing record; ``all`` sends it to the
    dead-letter topic and goes on. A conflict is logged (``report``), stops the run
    (``stop``) or is dead-lettered (``dlq``). ``max_failure_ratio`` over the last
    ``failure_window`` records stops a run in which most records fail.
    """

    tolerance: Literal["none", "all"] = "none"
    """none: a record error stops the run at that record; all: it goes to the dead-letter topic."""
    conflict: Literal["report", "stop", "dlq"] = "report"
    """What a conflict (R9) does: report logs it and goes on, stop stops the run there, dlq
    dead-letters the record."""
    dead_letter_queue: DeadLetterQueueConfig | None = None
    """The dead-letter topic; required by tolerance: all and conflict: dlq."""
    max_failure_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    """Stop when more than this share of the last failure_window records failed (1.0: never)."""
    failure_window: int = Field(default=1000, ge=10, le=1_000_000)
    """How many of the latest records the failure ratio is taken over."""

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
    """Where and how to consume."""
    schemas: SchemasConfig
    """Where the object types are declared."""
    schema_registry: SchemaRegistryConfig | None = None
    """The Schema Registry; required by routes with format: avro."""
    routes: list[RouteConfig] = Field(min_length=1)
    """Topic -> object type + format; at least one."""
    backend: BackendConfig
    """Where the objects are written: sqlite, postgres, mongodb, or a backend plugin."""
    errors: ErrorsConfig = Field(default_factory=ErrorsConfig)
    """What record errors do."""
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    """When batches close."""
    commit: CommitConfig = Field(default_factory=CommitConfig)
    """When offsets are committed."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Backoff for transient failures."""
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    """Bounds of a graceful stop."""
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    """Release after sync (DeleteRecords)."""
    tasks_max: int = Field(default=1, ge=1, alias="tasks.max")
    """Tasks of this connector on each worker (Kafka Connect's tasks.max): task 0 runs in the
    worker's process, every further one in a child process, all in the connector's consumer
    group, so its partitions and the machine's cores are shared. `data-ingest run` is one
    task and refuses more: host the file in a worker, or start more run processes."""

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
            tagged = [m for m in models if part in (_tag_of(m), _union_tag(current, m))]
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


def _union_tag(union: Any, model: type[BaseModel]) -> str | None:
    """The ``Tag`` that ``union`` gives its member ``model``, if any."""
    for member in typing.get_args(union):
        if typing.get_origin(member) is Annotated and typing.get_args(member)[0] is model:
            tags = [m.tag for m in member.__metadata__ if isinstance(m, Tag)]
            return tags[0] if tags else None
    return None


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
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None
    from connector.plugins import plugin_problems

    problems = plugin_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


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
