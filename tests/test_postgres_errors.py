"""How PostgreSQL connect, start-up and write failures are classified (retry or stop)."""

from __future__ import annotations

import ssl

import asyncpg
import pytest

from connector.backends.postgres import _connect_error, _retryable
from connector.errors import FatalBackendError, RetryableError


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError(
            "cannot call Connection.execute(): the underlying connection is closed"
        ),
    ],
)
def test_a_server_that_goes_away_while_preparing_is_retried(exc: Exception) -> None:
    error = _connect_error(exc, "preparing the tables")
    assert isinstance(error, RetryableError)
    assert "PostgreSQL unavailable while preparing the tables" in str(error)


def test_a_certificate_problem_stops_naming_the_setting() -> None:
    error = _connect_error(ssl.SSLCertVerificationError("certificate verify failed"), "connecting")
    assert isinstance(error, FatalBackendError)
    assert "backend.tls" in str(error)


def test_an_unknown_database_stops_naming_the_dsn() -> None:
    error = _connect_error(
        asyncpg.InvalidCatalogNameError('database "x" does not exist'), "connecting"
    )
    assert isinstance(error, FatalBackendError)
    assert str(error).startswith("backend.dsn:")


def test_a_connection_broken_by_a_server_shutting_down_mid_write_is_retried() -> None:
    # What asyncpg raised in CI while PostgreSQL shut down under a write (asyncpg issue 784).
    broken = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    assert _retryable(broken)
    assert _retryable(asyncpg.CannotConnectNowError("the database system is shutting down"))
    assert not _retryable(asyncpg.UndefinedTableError('relation "x" does not exist'))
    assert not _retryable(ValueError("a bug of ours"))
