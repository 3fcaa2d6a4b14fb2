"""``kafka.security`` translated for each engine, and described without its secrets.

The pipeline file has one security section so that switching ``kafka.engine`` never means
rewriting credentials; each engine gets the same TLS and SASL settings in its own terms.
Files are checked here, when a client is built, so that a wrong path fails with the key that
names it rather than with a client library's message.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from connector.config import KafkaConfig, KafkaTlsConfig, SecurityConfig
from connector.errors import ConnectorError


def librdkafka_settings(security: SecurityConfig) -> dict[str, str]:
    """librdkafka properties for ``security``; empty for PLAINTEXT, librdkafka's default, so
    that pass-through ``kafka.properties`` of older pipeline files keep working."""
    if security == SecurityConfig():
        return {}
    settings: dict[str, str] = {"security.protocol": security.protocol}
    if security.sasl is not None:
        settings["sasl.mechanisms"] = security.sasl.mechanism
        settings["sasl.username"] = security.sasl.username
        settings["sasl.password"] = security.sasl.password.get_secret_value()
    if security.uses_tls:
        tls = security.tls or KafkaTlsConfig()
        _check_files(tls)
        if tls.ca_file is not None:
            settings["ssl.ca.location"] = tls.ca_file
        if tls.cert_file is not None and tls.key_file is not None:
            settings["ssl.certificate.location"] = tls.cert_file
            settings["ssl.key.location"] = tls.key_file
        if tls.key_password is not None:
            settings["ssl.key.password"] = tls.key_password.get_secret_value()
        settings["ssl.endpoint.identification.algorithm"] = (
            "https" if tls.check_hostname else "none"
        )
    return settings


def aiokafka_kwargs(security: SecurityConfig) -> dict[str, Any]:
    """AIOKafkaConsumer / AIOKafkaAdminClient keyword arguments for ``security``.

    aiokafka has no hostname option of its own: ``check_hostname`` is set on the SSLContext,
    which still verifies the broker's certificate chain either way (like librdkafka's
    ``ssl.endpoint.identification.algorithm=none``).
    """
    kwargs: dict[str, Any] = {"security_protocol": security.protocol}
    if security.sasl is not None:
        kwargs["sasl_mechanism"] = security.sasl.mechanism
        kwargs["sasl_plain_username"] = security.sasl.username
        kwargs["sasl_plain_password"] = security.sasl.password.get_secret_value()
    if security.uses_tls:
        kwargs["ssl_context"] = _ssl_context(security.tls or KafkaTlsConfig())
    return kwargs


def describe_endpoint(config: KafkaConfig) -> str:
    """Where and how the client connects, for error messages; never a password."""
    security = config.security
    how: str = security.protocol
    if security.sasl is not None:
        how += f", SASL {security.sasl.mechanism} as user {security.sasl.username!r}"
    return f"Kafka at {config.bootstrap_servers!r} ({how})"


def _check_files(tls: KafkaTlsConfig) -> None:
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None and not os.access(path, os.R_OK):
            problem = "does not exist" if not os.path.exists(path) else "is not readable"
            raise ConnectorError(
                f"kafka.security.tls.{key}: {path!r} {problem}; give the path of a PEM file "
                "that this process can read"
            )


def _ssl_context(tls: KafkaTlsConfig) -> ssl.SSLContext:
    _check_files(tls)
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise ConnectorError(
            f"kafka.security.tls.ca_file: {tls.ca_file!r} holds no usable CA certificate "
            f"({exc.reason or exc}); give the PEM file of the CA that signed the brokers' "
            "certificates"
        ) from None
    if tls.cert_file is not None:
        # "" rather than None: OpenSSL would otherwise prompt on the terminal for the
        # passphrase of an encrypted key.
        password = tls.key_password.get_secret_value() if tls.key_password else ""
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password)
        except ssl.SSLError as exc:
            raise ConnectorError(
                f"kafka.security.tls: cannot load cert_file {tls.cert_file!r} with key_file "
                f"{tls.key_file!r} ({exc.reason or exc}); check that both are PEM, that the key "
                "belongs to the certificate, and key_password if the key is encrypted"
            ) from None
    context.check_hostname = tls.check_hostname
    return context
