"""The built-in formats as plugins: pyproject.toml registers these under
``data_ingest.formats``, exactly as a third-party package registers its own."""

from __future__ import annotations

from connector.formats import Decoder, FormatContext, FormatPlugin
from connector.schemas import ObjectType


def _target(context: FormatContext) -> ObjectType:
    if context.target is None:
        raise ValueError(f"format {context.route.format} needs a route with a type")
    return context.target


def _json(context: FormatContext) -> Decoder:
    from connector.formats.json_format import JsonDecoder

    return JsonDecoder(_target(context), context.route.unknown_fields or "reject")


def _avro_raw(context: FormatContext) -> Decoder:
    from connector.formats.avro_format import RawAvroDecoder

    return RawAvroDecoder(_target(context), context.route.writer_schema)


def _avro(context: FormatContext) -> Decoder:
    from connector.formats.avro_format import ConfluentAvroDecoder

    settings = context.config.schema_registry
    assert settings is not None  # the config requires it for avro routes
    return ConfluentAvroDecoder(context.types, context.target, context.registry(), settings.url)


JSON = FormatPlugin(_json)
AVRO = FormatPlugin(_avro)
AVRO_RAW = FormatPlugin(_avro_raw)
