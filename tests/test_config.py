"""Config loading: every user-facing error message is checked word for word."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_config, parse_config
from connector.errors import ConfigError

GOOD = """\
kafka:
  bootstrap_servers: ${BROKERS:-127.0.0.1:9092}
  group_id: ingest
  properties:
    session.timeout.ms: 10000
schemas:
  dir: avro
routes:
  - topic: measurements
    type: Measurement
    format: json
  - topic_regex: "events-.*"
    type: AppEvent
backend:
  type: sqlite
  path: ${DB_PATH}
batching:
  max_records: ${MAX_RECORDS:-500}
  max_wait_ms: 100
commit:
  interval_ms: 250
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    prefix = f"{path}: "
    lines = str(info.value).splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line.removeprefix(prefix) for line in lines]


def test_valid_file_with_env_substitution(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={"DB_PATH": "/tmp/x.db", "MAX_RECORDS": "42"})
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.kafka.properties == {"session.timeout.ms": 10000}
    assert config.backend.path == "/tmp/x.db"
    assert config.batching.max_records == 42
    assert config.batching.max_bytes == 4 * 1024 * 1024  # default
    assert config.commit.interval_ms == 250
    assert config.shutdown.timeout_ms == 30_000
    assert [r.subscription for r in config.routes] == ["measurements", "^events-.*"]
    assert config.route_for("events-eu").type == "AppEvent"
    assert config.route_for("events") is None
    assert config.route_for("measurements").type == "Measurement"
    assert config.schemas.dir == str(tmp_path / "avro")  # relative to the pipeline file


def test_env_value_overrides_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={"DB_PATH": "a.db", "BROKERS": "k:1"})
    assert config.kafka.bootstrap_servers == "k:1"


def test_dollar_dollar_is_a_literal_dollar() -> None:
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": "b", "group_id": "g$${x}"},
            "schemas": {"dir": "avro"},
            "routes": [{"topic": "t", "type": "T"}],
            "backend": {"type": "sqlite", "path": "p"},
        },
        "f",
        env={},
    )
    assert config.kafka.group_id == "g${x}"


def test_unset_variable_names_key_and_fix(tmp_path: Path) -> None:
    assert errors_of(tmp_path, GOOD) == [
        "backend.path: environment variable DB_PATH is not set; "
        "export it or give a default as ${DB_PATH:-value}"
    ]


def test_unknown_key_lists_allowed_keys(tmp_path: Path) -> None:
    text = GOOD.replace("  group_id: ingest\n", "  group_id: ingest\n  grup: x\n")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "kafka.grup: unknown key; allowed keys here: bootstrap_servers, engine, group_id, "
        "auto_offset_reset, poll_timeout_ms, security, properties"
    ]


def test_unknown_key_inside_backend(tmp_path: Path) -> None:
    text = GOOD.replace("  path: ${DB_PATH}\n", "  path: a.db\n  file: b.db\n")
    assert errors_of(tmp_path, text) == [
        "backend.file: unknown key; allowed keys here: type, path, synchronous, busy_timeout_ms"
    ]


def test_unknown_top_level_section(tmp_path: Path) -> None:
    assert errors_of(tmp_path, GOOD + "extra: 1\n", {"DB_PATH": "a"}) == [
        "extra: unknown key; allowed keys here: kafka, schemas, schema_registry, routes, "
        "backend, errors, batching, commit, retry, shutdown, release, tasks.max"
    ]


def test_wrong_type_names_value(tmp_path: Path) -> None:
    assert errors_of(tmp_path, GOOD, {"DB_PATH": "a", "MAX_RECORDS": "lots"}) == [
        "batching.max_records: Input should be a valid integer, unable to parse string as an "
        "integer (got 'lots')"
    ]


def test_out_of_range(tmp_path: Path) -> None:
    assert errors_of(tmp_path, GOOD, {"DB_PATH": "a", "MAX_RECORDS": "0"}) == [
        "batching.max_records: Input should be greater than or equal to 1 (got '0')"
    ]


def test_missing_values(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "kafka: {}\nschemas: {dir: a}\nroutes: []\nbackend: {}\n") == [
        "kafka.bootstrap_servers: missing value; this key is required",
        "routes: needs at least 1 entry",
        "backend.type: missing value; say which backend, e.g. type: sqlite",
    ]


def test_missing_section(tmp_path: Path) -> None:
    text = "kafka:\n  bootstrap_servers: b\nschemas: {dir: a}\nroutes:\n  - {topic: t, type: T}\n"
    assert errors_of(tmp_path, text) == ["backend: missing value; this key is required"]


def test_unknown_backend_type(tmp_path: Path) -> None:
    text = GOOD.replace("type: sqlite", "type: mysql")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "backend.type: unknown type 'mysql'; use one of 'mongodb', 'postgres', 'sqlite' or install a backend plugin (`data-ingest plugins` lists the installed ones)"
    ]


def test_unknown_format(tmp_path: Path) -> None:
    text = GOOD.replace("format: json", "format: xml")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "routes[0].format: unknown format 'xml'; use one of 'avro', 'avro-raw', 'json' or install a format plugin (`data-ingest plugins` lists the installed ones)"
    ]


def test_route_needs_exactly_one_topic_selector(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - topic: measurements\n", "  - topic: measurements\n    topic_regex: m.*\n"
    )
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "routes[0]: give exactly one of 'topic' or 'topic_regex'"
    ]


def test_bad_regex(tmp_path: Path) -> None:
    text = GOOD.replace('"events-.*"', '"events-(["')
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "routes[1]: topic_regex is not a valid regular expression: "
        "unterminated character set at position 8"
    ]


def test_topic_routed_twice(tmp_path: Path) -> None:
    text = GOOD.replace('topic_regex: "events-.*"', "topic: measurements")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "(top level): topic 'measurements' is routed twice; keep one route"
    ]


def test_managed_client_property_refused(tmp_path: Path) -> None:
    text = GOOD.replace("session.timeout.ms: 10000", "enable.auto.commit: true")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "kafka.properties: client property 'enable.auto.commit' is managed by the connector "
        "(offsets are committed by the connector only after the backend acks); remove it"
    ]


def test_section_of_wrong_shape(tmp_path: Path) -> None:
    text = GOOD + "retry: fast\n"
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "retry: expected a mapping of keys, got str"
    ]


def test_retry_bounds_ordered(tmp_path: Path) -> None:
    text = GOOD + "retry:\n  initial_backoff_ms: 500\n  max_backoff_ms: 100\n"
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "retry: max_backoff_ms must be >= initial_backoff_ms"
    ]


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "kafka:\n  bootstrap_servers: [a\nroutes: 1\n") == [
        "line 3, column 7: invalid YAML: expected ',' or ']', but got ':'"
    ]


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "kafka: {}\nkafka: {}\n") == [
        "line 2, column 1: invalid YAML: duplicate key 'kafka'"
    ]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "- a\n- b\n") == [
        "(top level): expected a mapping of sections (kafka, routes, ...)"
    ]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read the file: No such file or directory"


def test_route_type_or_type_from(tmp_path: Path) -> None:
    text = GOOD.replace("    type: Measurement\n", "")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "routes[0]: give exactly one of 'type' (an object type name) or 'type_from: writer_schema'"
    ]


def test_type_from_needs_avro(tmp_path: Path) -> None:
    text = GOOD.replace("    type: Measurement\n", "    type_from: writer_schema\n")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "routes[0]: type_from: writer_schema needs format: avro (a schema registry)"
    ]


def test_avro_route_needs_a_schema_registry(tmp_path: Path) -> None:
    text = GOOD.replace("format: json", "format: avro")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "(top level): a route has format: avro, which needs a schema_registry section with its url"
    ]


def test_option_of_another_format(tmp_path: Path) -> None:
    text = GOOD.replace("format: json", "format: avro-raw\n    unknown_fields: ignore")
    assert errors_of(tmp_path, text, {"DB_PATH": "a"}) == [
        "routes[0]: unknown_fields applies to format: json only"
    ]


def test_schema_registry_section(tmp_path: Path) -> None:
    text = GOOD.replace("format: json", "format: avro") + (
        "schema_registry:\n  url: https://sr:8081\n  basic_auth_user_info: ${SR_AUTH}\n"
        "  properties:\n    ssl.ca.location: /ca.pem\n"
    )
    config = load_config(write(tmp_path, text), env={"DB_PATH": "a", "SR_AUTH": "u:p"})
    assert config.schema_registry.client_settings() == {
        "url": "https://sr:8081",
        "basic.auth.user.info": "u:p",
        "ssl.ca.location": "/ca.pem",
    }
    bad = GOOD + "schema_registry:\n  url: sr:8081\n"
    assert errors_of(tmp_path, bad, {"DB_PATH": "a"}) == [
        "schema_registry.url: String should match pattern '^https?://' (got 'sr:8081')"
    ]


def test_postgres_and_mongodb_sections(tmp_path: Path) -> None:
    pg = GOOD.replace(
        "  type: sqlite\n  path: ${DB_PATH}\n",
        "  type: postgres\n  dsn: postgresql://u@db/ingest\n  schema: ingest\n  pool: {max_size: 8}\n  tls: {mode: require}\n  colour: red\n",
    )
    assert errors_of(tmp_path, pg) == [
        "backend.colour: unknown key; allowed keys here: type, dsn, schema, pool, create_tables, tls, command_timeout_ms, connect_timeout_ms"
    ]
    config = load_config(write(tmp_path, pg.replace("  colour: red\n", "")))
    assert (config.backend.db_schema, config.backend.pool.max_size, config.backend.tls.mode) == (
        "ingest",
        8,
        "require",
    )
    mongo = GOOD.replace(
        "  type: sqlite\n  path: ${DB_PATH}\n",
        "  type: mongodb\n  uri: mongodb://db:27017/\n  database: ingest\n  timeseries:\n    Measurement: {time_field: timestamp, granularity: weeks}\n",
    )
    assert errors_of(tmp_path, mongo) == [
        "backend.timeseries.Measurement.granularity: Input should be 'seconds', 'minutes' or 'hours' (got 'weeks')"
    ]
    verify = pg.replace("  colour: red\n", "").replace("{mode: require}", "{mode: verify-full}")
    assert errors_of(tmp_path, verify) == [
        "backend.tls: mode verify-full needs ca_file (the CA that signed the server)"
    ]
