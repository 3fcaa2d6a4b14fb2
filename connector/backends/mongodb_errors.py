"""How pymongo's errors reach the pipeline: retryable, fatal with the fix, or one rejection.

A batch-level driver error becomes ``RetryableError`` when the same write may succeed later
(network, elections, shutdowns, time limits, write concern timeouts) and
``FatalBackendError`` with the key to fix otherwise. A write error of one document (by its
index in a bulk reply) rejects only that document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from connector.backends import ObjectResult, Outcome
from connector.config import MongoBackendConfig
from connector.errors import ConnectorError, FatalBackendError, RetryableError

DUPLICATE_KEY = 11000
#: Server error codes after which the same write may succeed later: network and election
#: errors, shutdowns, time limits, write concern timeouts.
RETRYABLE_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)
#: Write concern errors that no retry can fix: the deployment cannot satisfy the concern.
UNSATISFIABLE_WRITE_CONCERN = frozenset({79, 100})
UNAUTHORIZED = frozenset({13, 8000})  # Unauthorized; Atlas's AtlasError (e.g. no privilege)
AUTHENTICATION_FAILED = 18


def rejected(reason: str) -> ObjectResult:
    """The outcome of one document the server (or the encoder) refused."""
    return ObjectResult(Outcome.REJECTED, reason)


def server_message(error: Mapping[str, Any]) -> str:
    """One write error of a bulk reply in the server's words."""
    return f"{error.get('errmsg', 'write error')} (code {error.get('code')})"


def write_concern_failure(
    error: Mapping[str, Any], doing: str, server: str, config: MongoBackendConfig
) -> ConnectorError:
    """The error for a ``writeConcernError`` in a reply."""
    exc = WriteConcernError(str(error.get("errmsg")), error.get("code"), dict(error))
    return translate(exc, doing, server, config)


def translate(
    exc: PyMongoError, doing: str, server: str, config: MongoBackendConfig
) -> ConnectorError:
    """The connector's error for a driver error while ``doing`` something on ``server``."""
    message = str(exc).split(", Timeout:")[0]  # server selection errors go on for lines
    if isinstance(exc, OperationFailure):  # the server's own words, not the whole reply
        message = (exc.details or {}).get("errmsg") or message.split(", full error:")[0]
    code = getattr(exc, "code", None)
    wc = config.write_concern
    if isinstance(exc, WriteConcernError):
        if code in UNSATISFIABLE_WRITE_CONCERN:
            return FatalBackendError(
                f"backend.write_concern: this deployment cannot satisfy w={wc.w} "
                f"j={str(wc.j).lower()}: {message}; lower w or fix the replica set"
            )
        return RetryableError(
            f"{server}: write concern w={wc.w} not satisfied while {doing} ({message}); "
            "the batch is not acknowledged"
        )
    if isinstance(exc, ConnectionFailure):
        return RetryableError(f"{server} unavailable while {doing}: {message}")
    if exc.has_error_label("RetryableWriteError") or code in RETRYABLE_CODES:
        return RetryableError(f"{server}: transient error while {doing}: {message}")
    if code == AUTHENTICATION_FAILED:
        return FatalBackendError(
            f"backend.uri: authentication failed: {message}; check the user name, "
            "password and authSource in the URI"
        )
    if code in UNAUTHORIZED:
        return FatalBackendError(
            f"not authorised on database {config.database!r} while {doing}: "
            f"{message}; grant the connector's user the readWrite role on it"
        )
    if isinstance(exc, ConfigurationError):
        return FatalBackendError(f"backend.uri: {message}")
    return FatalBackendError(f"{server} refused {doing}: {message}")
