"""kafka.security: validation errors word for word, and its translation for each engine."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from connector.config import KafkaConfig, SecurityConfig, parse_config
from connector.errors import ConfigError, ConnectorError
from connector.sources.confluent import consumer_settings
from connector.sources.security import aiokafka_kwargs, describe_endpoint, librdkafka_settings

SECRET = "s3cret-Pa55"


def pipeline(kafka: dict[str, Any]) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "k:9093", **kafka},
        "schemas": {"dir": "avro"},
        "routes": [{"topic": "t", "type": "Measurement"}],
        "backend": {"type": "sqlite", "path": "x.db"},
    }


def errors_of(kafka: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(pipeline(kafka), "p.yaml", env={})
    return caught.value.problems


def kafka_config(kafka: dict[str, Any]) -> KafkaConfig:
    return parse_config(pipeline(kafka), "p.yaml", env={}).kafka


def security(section: dict[str, Any]) -> SecurityConfig:
    return SecurityConfig.model_validate(section)


SASL = {"mechanism": "SCRAM-SHA-512", "username": "alice", "password": SECRET}


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            {"protocol": "SASL_SSL"},
            "kafka.security: protocol SASL_SSL needs sasl (mechanism, username, password); "
            "add a sasl section, or use protocol SSL for a listener without SASL",
        ),
        (
            {"protocol": "SASL_PLAINTEXT"},
            "kafka.security: protocol SASL_PLAINTEXT needs sasl (mechanism, username, password); "
            "add a sasl section, or use protocol PLAINTEXT for a listener without SASL",
        ),
        (
            {"sasl": SASL},
            "kafka.security: sasl is set but protocol PLAINTEXT sends no credentials; "
            "use protocol SASL_SSL (or SASL_PLAINTEXT) or remove sasl",
        ),
        (
            {"protocol": "SSL", "sasl": SASL},
            "kafka.security: sasl is set but protocol SSL sends no credentials; "
            "use protocol SASL_SSL or remove sasl",
        ),
        (
            {"protocol": "SASL_PLAINTEXT", "sasl": SASL, "tls": {"ca_file": "/ca.pem"}},
            "kafka.security: tls is set but protocol SASL_PLAINTEXT does not use TLS; "
            "use protocol SASL_SSL or remove tls",
        ),
        (
            {"tls": {"ca_file": "/ca.pem"}},
            "kafka.security: tls is set but protocol PLAINTEXT does not use TLS; "
            "use protocol SSL or remove tls",
        ),
        (
            {"protocol": "SSL", "tls": {"cert_file": "/c.pem"}},
            "kafka.security.tls: cert_file needs key_file (the private key of the client "
            "certificate); add key_file or remove cert_file",
        ),
        (
            {"protocol": "SSL", "tls": {"key_file": "/k.pem"}},
            "kafka.security.tls: key_file needs cert_file (the client certificate); "
            "add cert_file or remove key_file",
        ),
        (
            {"protocol": "SSL", "tls": {"key_password": SECRET}},
            "kafka.security.tls: key_password needs key_file (it decrypts that key); "
            "add key_file or remove key_password",
        ),
        (
            {"protocol": "SASL_SSL", "sasl": {**SASL, "mechanism": "GSSAPI"}},
            "kafka.security.sasl.mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or "
            "'SCRAM-SHA-512' (got 'GSSAPI')",
        ),
        (
            {"protocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN", "username": "alice"}},
            "kafka.security.sasl.password: missing value; this key is required",
        ),
        (
            {"protocol": "SSL", "ssl": {"ca_file": "/ca.pem"}},
            "kafka.security.ssl: unknown key; allowed keys here: protocol, sasl, tls",
        ),
        (
            {"protocol": "TLS"},
            "kafka.security.protocol: Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or "
            "'SASL_SSL' (got 'TLS')",
        ),
    ],
)
def test_security_errors(section: dict[str, Any], problem: str) -> None:
    assert errors_of({"security": section}) == [problem]


def test_a_password_read_as_a_number_is_refused_without_echoing_it() -> None:
    problems = errors_of(
        {"security": {"protocol": "SASL_SSL", "sasl": {**SASL, "password": 90210}}}
    )
    assert problems == [
        "kafka.security.sasl.password: must be a string; quote it in YAML so that it is not "
        "read as a number or boolean"
    ]
    assert "90210" not in problems[0]


def test_the_password_never_shows_in_reprs() -> None:
    config = kafka_config({"security": {"protocol": "SASL_SSL", "sasl": SASL}})
    assert SECRET not in repr(config)
    assert SECRET not in str(config.model_dump())
    assert SECRET not in config.model_dump_json()
    assert SECRET not in describe_endpoint(config)
    assert describe_endpoint(config) == (
        "Kafka at 'k:9093' (SASL_SSL, SASL SCRAM-SHA-512 as user 'alice')"
    )


def test_a_security_property_given_twice_is_refused() -> None:
    problems = errors_of(
        {
            "security": {"protocol": "SASL_SSL", "sasl": SASL},
            "properties": {"sasl.password": SECRET},
        }
    )
    assert problems == [
        "kafka.properties: client property 'sasl.password' is also given as "
        "kafka.security.sasl.password; remove it from properties"
    ]


def test_confluent_keeps_security_properties_when_there_is_no_security_section() -> None:
    config = kafka_config({"properties": {"security.protocol": "SSL", "ssl.ca.location": "/ca"}})
    assert config.properties == {"security.protocol": "SSL", "ssl.ca.location": "/ca"}
    assert librdkafka_settings(config.security) == {}


@pytest.mark.parametrize(
    ("properties", "problem"),
    [
        (
            {"ssl.ca.location": "/ca.pem"},
            "kafka.properties: client property 'ssl.ca.location' is a security setting; "
            "engine aiokafka takes it from kafka.security.tls.ca_file only, so move it there",
        ),
        (
            {"queued.max.messages.kbytes": 1024},
            "kafka.properties: client property 'queued.max.messages.kbytes' has no aiokafka "
            "equivalent and would be ignored by engine aiokafka; remove it or use engine "
            "confluent (engine aiokafka understands client.id, client.rack, session.timeout.ms, "
            "heartbeat.interval.ms, max.poll.interval.ms, fetch.min.bytes, fetch.max.bytes, "
            "fetch.wait.max.ms, max.partition.fetch.bytes, metadata.max.age.ms, "
            "retry.backoff.ms, connections.max.idle.ms, check.crcs)",
        ),
        (
            {"session.timeout.ms": "soon"},
            "kafka.properties: client property 'session.timeout.ms' must be a whole number "
            "(got 'soon')",
        ),
        (
            {"check.crcs": "maybe"},
            "kafka.properties: client property 'check.crcs' must be true or false (got 'maybe')",
        ),
        (
            {"client.id": 7},
            "kafka.properties: client property 'client.id' must be a string (got 7)",
        ),
    ],
)
def test_aiokafka_refuses_properties_it_would_ignore(
    properties: dict[str, Any], problem: str
) -> None:
    assert errors_of({"engine": "aiokafka", "properties": properties}) == [problem]


def test_aiokafka_translates_the_properties_it_understands() -> None:
    config = kafka_config(
        {
            "engine": "aiokafka",
            "properties": {
                "session.timeout.ms": "6000",
                "heartbeat.interval.ms": 1000,
                "check.crcs": "false",
                "client.id": "ingest-1",
            },
        }
    )
    assert config.aiokafka_options() == {
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "check_crcs": False,
        "client_id": "ingest-1",
    }


def test_a_heartbeat_every_second_unless_the_properties_say_otherwise() -> None:
    """Both engines heartbeat every 1 s by default (rebalances in ~2 s, not ~6 s)."""
    plain = kafka_config({"engine": "aiokafka"})
    assert plain.aiokafka_options() == {"heartbeat_interval_ms": 1000}
    assert consumer_settings(plain)["heartbeat.interval.ms"] == 1000
    slow = kafka_config({"properties": {"heartbeat.interval.ms": "3000"}})
    assert consumer_settings(slow)["heartbeat.interval.ms"] == "3000"
    assert kafka_config(
        {"engine": "aiokafka", "properties": {"heartbeat.interval.ms": 2500}}
    ).aiokafka_options() == {"heartbeat_interval_ms": 2500}


# --- translation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate (also used as the CA), its key, and the key encrypted."""
    directory = tmp_path_factory.mktemp("pem")
    files = {
        name: str(directory / f"{name}.pem") for name in ("cert", "key", "encrypted_key", "junk")
    }
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", files["key"], "-out", files["cert"], "-days", "2",
            "-subj", "/CN=data-ingest test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [
            "openssl", "pkey", "-in", files["key"], "-aes256", "-passout", f"pass:{SECRET}",
            "-out", files["encrypted_key"],
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    Path(files["junk"]).write_text("not a certificate\n")
    return files


def test_plaintext_translates_to_defaults() -> None:
    assert librdkafka_settings(SecurityConfig()) == {}
    assert aiokafka_kwargs(SecurityConfig()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_mutual_tls_for_librdkafka(pem: dict[str, str]) -> None:
    section = security(
        {
            "protocol": "SASL_SSL",
            "sasl": SASL,
            "tls": {
                "ca_file": pem["cert"],
                "cert_file": pem["cert"],
                "key_file": pem["encrypted_key"],
                "key_password": SECRET,
            },
        }
    )
    assert librdkafka_settings(section) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": SECRET,
        "ssl.ca.location": pem["cert"],
        "ssl.certificate.location": pem["cert"],
        "ssl.key.location": pem["encrypted_key"],
        "ssl.key.password": SECRET,
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_ssl_without_hostname_check_and_sasl_plaintext_for_librdkafka(
    pem: dict[str, str],
) -> None:
    section = security(
        {"protocol": "SSL", "tls": {"ca_file": pem["cert"], "check_hostname": False}}
    )
    assert librdkafka_settings(section) == {
        "security.protocol": "SSL",
        "ssl.ca.location": pem["cert"],
        "ssl.endpoint.identification.algorithm": "none",
    }
    plain = security({"protocol": "SASL_PLAINTEXT", "sasl": {**SASL, "mechanism": "PLAIN"}})
    assert librdkafka_settings(plain) == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "alice",
        "sasl.password": SECRET,
    }


def test_sasl_ssl_with_mutual_tls_for_aiokafka(pem: dict[str, str]) -> None:
    section = security(
        {
            "protocol": "SASL_SSL",
            "sasl": SASL,
            "tls": {
                "ca_file": pem["cert"],
                "cert_file": pem["cert"],
                "key_file": pem["encrypted_key"],
                "key_password": SECRET,
            },
        }
    )
    kwargs = aiokafka_kwargs(section)
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert subjects == [{"commonName": "data-ingest test"}]


def test_ssl_without_hostname_check_for_aiokafka_still_verifies_the_chain(
    pem: dict[str, str],
) -> None:
    kwargs = aiokafka_kwargs(
        security({"protocol": "SSL", "tls": {"ca_file": pem["cert"], "check_hostname": False}})
    )
    assert kwargs["security_protocol"] == "SSL"
    assert kwargs["ssl_context"].check_hostname is False
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert aiokafka_kwargs(security({"protocol": "SSL"}))["ssl_context"].check_hostname is True


def test_a_missing_file_names_its_key_for_both_engines(tmp_path: Path) -> None:
    section = security({"protocol": "SSL", "tls": {"ca_file": str(tmp_path / "nope.pem")}})
    expected = (
        f"kafka.security.tls.ca_file: '{tmp_path / 'nope.pem'}' does not exist; give the path "
        "of a PEM file that this process can read"
    )
    for translate in (librdkafka_settings, aiokafka_kwargs):
        with pytest.raises(ConnectorError) as caught:
            translate(section)
        assert str(caught.value) == expected


def test_unusable_pem_files_name_their_keys_for_aiokafka(pem: dict[str, str]) -> None:
    with pytest.raises(ConnectorError) as caught:
        aiokafka_kwargs(security({"protocol": "SSL", "tls": {"ca_file": pem["junk"]}}))
    assert str(caught.value).startswith(
        f"kafka.security.tls.ca_file: '{pem['junk']}' holds no usable CA certificate ("
    )
    wrong_password = {
        "cert_file": pem["cert"],
        "key_file": pem["encrypted_key"],
        "key_password": "wrong",
    }
    with pytest.raises(ConnectorError) as caught:
        aiokafka_kwargs(security({"protocol": "SSL", "tls": wrong_password}))
    message = str(caught.value)
    assert message.startswith(
        f"kafka.security.tls: cannot load cert_file '{pem['cert']}' with key_file "
        f"'{pem['encrypted_key']}' ("
    )
    assert message.endswith("and key_password if the key is encrypted")
    assert "wrong" not in message
    no_password = {"cert_file": pem["cert"], "key_file": pem["encrypted_key"]}
    with pytest.raises(ConnectorError, match="and key_password if the key is encrypted"):
        aiokafka_kwargs(security({"protocol": "SSL", "tls": no_password}))
