"""The built-in backends as plugins: pyproject.toml registers these under
``data_ingest.backends``, exactly as a third-party package registers its own.

The backend modules are imported only when a backend is created, so that listing plugins
or loading a pipeline file does not import every database driver.
"""

from __future__ import annotations

from connector.backends import Backend, BackendPlugin
from connector.config import MongoBackendConfig, PostgresBackendConfig, SqliteBackendConfig
from connector.schemas import ObjectTypes


def _sqlite(config: SqliteBackendConfig, _types: ObjectTypes) -> Backend:
    from connector.backends.sqlite import SqliteBackend

    return SqliteBackend(config)


def _postgres(config: PostgresBackendConfig, types: ObjectTypes) -> Backend:
    from connector.backends.postgres import PostgresBackend

    return PostgresBackend(config, types)


def _postgres_problems(config: PostgresBackendConfig, types: ObjectTypes) -> list[str]:
    from connector.backends.postgres_tables import table_problems

    return table_problems(types, config.db_schema)


def _mongodb(config: MongoBackendConfig, types: ObjectTypes) -> Backend:
    from connector.backends.mongodb import MongoBackend

    return MongoBackend(config, types)


def _mongodb_problems(config: MongoBackendConfig, types: ObjectTypes) -> list[str]:
    from connector.backends.mongodb_settings import settings_problems

    return settings_problems(config, types)


SQLITE = BackendPlugin(SqliteBackendConfig, _sqlite)
POSTGRES = BackendPlugin(PostgresBackendConfig, _postgres, _postgres_problems)
MONGODB = BackendPlugin(MongoBackendConfig, _mongodb, _mongodb_problems)
