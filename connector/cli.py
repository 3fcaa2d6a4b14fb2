"""The ``data-ingest`` command line.

Exit status: 0 success, 1 a runtime failure (bad record, backend refused, Kafka failed),
2 an invalid configuration (nothing was consumed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from connector.backends import create_backend
from connector.config import DeadLetterQueueConfig, PipelineConfig, load_config
from connector.dlq import DeadLetterProducer
from connector.dlq_inspect import inspect
from connector.dlq_replay import ReplaySource
from connector.entry import EARLY_SIGNALS
from connector.errors import ConfigError, ConnectorError
from connector.gc_tuning import tune_gc
from connector.logs import REDACT, secrets_of, set_connector, setup_logging
from connector.mapping import checked_types
from connector.pipeline import Pipeline, RunSummary
from connector.progress import PROGRESS_INTERVAL_S, LogProgress, ProgressSink
from connector.schemas import ObjectTypes, check_directory, load_object_types
from connector.sources import create_source
from connector.timeouts import within

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("connector")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-ingest",
        description=(
            "Consume Kafka topics, map each record onto a declared object type and insert it "
            "into a sync backend. Offsets are committed only after the backend acknowledged."
        ),
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log on stderr (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log lines as text, or as JSON objects one per line, with the run summary as "
        "one JSON object on stdout (default: text)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the pipeline",
        description=(
            "Run the pipeline until SIGINT/SIGTERM (or, with --until-caught-up, until every "
            "assigned partition has no lag), then commit what the backend acknowledged and "
            "print a summary. Exit 0 on success, 1 on a failure, 2 on a config error."
        ),
    )
    run.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the pipeline file (YAML)"
    )
    run.add_argument(
        "--until-caught-up",
        action="store_true",
        help="stop once every assigned partition has been ingested up to its end offset",
    )
    run.add_argument(
        "--assignment-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --until-caught-up: fail when no partition is assigned within this time "
        "(default: 60)",
    )
    run.add_argument(
        "--progress-interval",
        type=float,
        default=PROGRESS_INTERVAL_S,
        metavar="SECONDS",
        help="how often to log a progress line (default: 10); with --until-caught-up and "
        "text logs on a terminal, a live progress bar is drawn instead",
    )
    run.add_argument(
        "--rest-listen",
        metavar="HOST:PORT",
        help="also serve the REST API, /ping, /ready and /metrics there (bearer token for "
        "mutating calls from $DATA_INGEST_REST_TOKEN, if set)",
    )

    worker = commands.add_parser(
        "worker",
        help="host many connectors and serve the Kafka Connect REST API",
        description=(
            "Host the connectors of a directory of pipeline files and those created over "
            "the REST API (Kafka Connect compatible, plus /ping, /ready and /metrics) until "
            "SIGINT/SIGTERM. Exit 2 on an invalid worker file."
        ),
    )
    worker.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the worker file (YAML)"
    )

    validate = commands.add_parser(
        "validate",
        help="check the config and the connectivity to Kafka and the backend",
        description=(
            "Validate the pipeline file, connect to Kafka and list the routed topics, and "
            "open the backend. Exit 0 when all is well, 1 on a connectivity problem, "
            "2 on a config error. Nothing is consumed or written."
        ),
    )
    validate.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the pipeline file (YAML)"
    )
    validate.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the Kafka broker (default: 10)",
    )
    dlq = commands.add_parser(
        "dlq",
        help="work with the dead-letter topic",
        description="Inspect the dead-letter topic, or replay it once the cause is fixed.",
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    replay = dlq_commands.add_parser(
        "replay",
        help="feed the dead letters through the route of their original topic again",
        description=(
            "Read the dead-letter topic (up to its end at start) and feed every record "
            "through the route of its original topic, with its original coordinates (so "
            "derived ids and 'latest offset wins' are those of a first clean run). A record "
            "that fails again is handled by errors.tolerance (back to the dead-letter topic, "
            "for the next replay). Progress is committed in its own consumer group, so a "
            "second replay changes nothing. Exit 0 on success, 1 on a failure, 2 on a config "
            "error."
        ),
    )
    replay.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the pipeline file (YAML)"
    )
    replay.add_argument(
        "--until-caught-up",
        action="store_true",
        help="stop once the dead letters present at start are replayed (what replay always "
        "does; accepted for symmetry with run)",
    )
    replay.add_argument(
        "--group",
        metavar="GROUP",
        help="the replay's consumer group (default: kafka.group_id + '.dlq-replay')",
    )
    inspect = dlq_commands.add_parser(
        "inspect",
        help="count the dead letters by error kind, topic and type; show the first errors",
        description=(
            "Read the dead-letter topic from its start to its end and print counts by error "
            "kind, original topic and object type, and the first errors. Reads only."
        ),
    )
    inspect.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the pipeline file (YAML)"
    )
    inspect.add_argument(
        "--errors",
        type=int,
        default=5,
        metavar="N",
        help="how many errors to show (default: 5)",
    )

    schemas = commands.add_parser(
        "schemas",
        help="work with the object types (.avsc files)",
        description="Work with the object types declared as Avro schemas.",
    )
    schema_commands = schemas.add_subparsers(
        dest="schemas_command", required=True, metavar="ACTION"
    )
    check = schema_commands.add_parser(
        "check",
        help="check a directory of object types against the rules R1-R7",
        description=(
            "Check every .avsc file of DIR against the rules of asymmetric data (R1-R7) and "
            "print all violations, one per line: file, type, field path, rule, fix. "
            "Exit 1 on violations, 0 otherwise."
        ),
    )
    check.add_argument("dir", metavar="DIR", help="directory of .avsc files")
    check.add_argument(
        "--previous",
        metavar="DIR",
        help="the previous version of the same types, to check that no type changed its kind (R7)",
    )
    config = commands.add_parser(
        "config",
        help="the pipeline file's JSON Schema and reference",
        description="Print what the pipeline file may contain, generated from the code.",
    )
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_commands.add_parser(
        "schema",
        help="print the JSON Schema of the pipeline file",
        description="Print the JSON Schema of the pipeline file (for editors and checkers).",
    )
    config_commands.add_parser(
        "reference",
        help="print the configuration reference (Markdown)",
        description="Print docs/configuration.md: every key, its type, default and meaning.",
    )
    commands.add_parser(
        "plugins",
        help="list the installed backends and formats",
        description=(
            "List the backends (entry point group data_ingest.backends) and formats "
            "(data_ingest.formats) that are installed, with the package and version of each."
        ),
    )
    return parser


def _config(args: argparse.Namespace) -> int:
    from connector.config_reference import render_markdown, schema_text

    print(schema_text() if args.config_command == "schema" else render_markdown(), end="")
    return EXIT_OK


def _plugins() -> int:
    from connector.plugins import list_plugins

    rows = [("KIND", "NAME", "PACKAGE", "VERSION", "OBJECT")]
    rows += [(p.kind, p.name, p.package, p.version, p.target) for p in list_plugins()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    return EXIT_OK


def _check_schemas(args: argparse.Namespace) -> int:
    violations = check_directory(args.dir, args.previous)
    for violation in violations:
        print(violation)
    if violations:
        print(f"{len(violations)} violation(s)", file=sys.stderr)
        return EXIT_FAILURE
    types = load_object_types(args.dir)
    print(f"{args.dir}: {len(types)} object types OK ({', '.join(types.names())})")
    return EXIT_OK


def _load(path: str) -> tuple[PipelineConfig, ObjectTypes]:
    """The pipeline file and its object types, checked against each other."""
    config = load_config(path)
    return config, checked_types(config, path)


def _progress_sink(args: argparse.Namespace) -> ProgressSink:
    """A live bar for a run until caught up with text logs on a terminal, else log lines."""
    until_caught_up = args.command == "dlq" or args.until_caught_up
    if until_caught_up and args.log_format == "text" and sys.stderr.isatty():
        from connector.progress_bar import BarProgress

        return BarProgress()
    return LogProgress(getattr(args, "progress_interval", PROGRESS_INTERVAL_S))


def _report(args: argparse.Namespace, lines: list[str], prefix: str = "error: ") -> None:
    """A failure on stderr: plain lines, or log lines with --log-format json; both redacted."""
    for line in lines:
        if args.log_format == "json":
            log.error("%s", line)
        else:
            print(f"{prefix}{REDACT(line)}", file=sys.stderr, flush=True)


def _replay_pipeline(
    config: PipelineConfig, types: ObjectTypes, args: argparse.Namespace
) -> Pipeline:
    """The pipeline of ``dlq replay``: the dead-letter topic in a consumer group of its own,
    dead letters (of records that fail again) still named after the connector."""
    settings = config.errors.dead_letter_queue
    assert settings is not None  # checked by _dlq_settings
    name = config.kafka.group_id
    kafka = config.kafka.model_copy(update={"group_id": args.group or f"{name}.dlq-replay"})
    return Pipeline(
        config,
        types,
        ReplaySource(create_source(kafka), kafka, settings.topic),
        create_backend(config.backend, types),
        until_caught_up=True,
        dead_letters=DeadLetterProducer(config.kafka, settings, name, 0),
        replay=True,
        progress=_progress_sink(args),
    )


def _dlq_settings(config: PipelineConfig, path: str) -> DeadLetterQueueConfig:
    settings = config.errors.dead_letter_queue
    if settings is None:
        raise ConfigError(
            path,
            ["errors.dead_letter_queue: missing; name the dead-letter topic (topic: ...)"],
        )
    return settings


async def _run(config: PipelineConfig, types: ObjectTypes, args: argparse.Namespace) -> int:
    topics = ", ".join(r.topic or f"/{r.topic_regex}/" for r in config.routes)
    log.info(
        "starting: %s into backend %s as group %s (engine %s)",
        topics,
        config.backend.type,
        config.kafka.group_id,
        config.kafka.engine,
    )
    if args.command == "dlq":
        pipeline = _replay_pipeline(config, types, args)
    elif args.rest_listen or config.tasks_max > 1:
        from connector.worker_cli import run_hosted

        options = {
            "until_caught_up": args.until_caught_up,
            "assignment_timeout_s": args.assignment_timeout,
        }
        return _summarized(
            args, await run_hosted(config, types, args.config, args.rest_listen, options)
        )
    else:
        pipeline = Pipeline(
            config,
            types,
            create_source(config.kafka),
            create_backend(config.backend, types),
            until_caught_up=args.until_caught_up,
            assignment_timeout_s=args.assignment_timeout,
            progress=_progress_sink(args),
        )
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            log.info("%s: stopping; finishing the in-flight batch and committing", name)
            pipeline.request_stop()
        else:
            log.warning("%s again: abandoning the in-flight batch", name)
            pipeline.request_stop(abandon=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    for early in EARLY_SIGNALS:  # received while the process was starting
        on_signal(early)
    return _summarized(args, await pipeline.run())


def _summarized(args: argparse.Namespace, summary: RunSummary) -> int:
    """Print the run's summary (text or one JSON object) and its exit code."""
    log.info("stopped after %.1f s: %d records", summary.elapsed_s, summary.records)
    if summary.error is not None:
        summary.error = REDACT(summary.error)
    if args.log_format == "json":
        print(json.dumps(summary.as_dict()), flush=True)
    else:
        print("\n".join(summary.lines()), flush=True)
    if summary.error is not None:
        _report(args, [summary.error])
        return EXIT_FAILURE
    return EXIT_OK


async def _validate(
    config: PipelineConfig, types: ObjectTypes, args: argparse.Namespace, source_name: str
) -> int:
    problems: list[str] = []
    source = create_source(config.kafka)
    try:
        topics = await within(source.check(args.timeout), args.timeout + 5)
        print(f"kafka: {config.kafka.bootstrap_servers} reachable, {len(topics)} topics")
        for route in config.routes:
            if route.topic is not None:
                state = "exists" if route.topic in topics else "MISSING"
                if state == "MISSING":
                    problems.append(
                        f"routes: topic {route.topic!r} does not exist on the broker; "
                        "create it or fix the route"
                    )
                print(f"  route {route.topic} -> {route.type}: {state}")
            else:
                matched = [t for t in topics if route.matches(t)]
                print(f"  route /{route.topic_regex}/ -> {route.type}: {len(matched)} topic(s)")
    except Exception as exc:
        problems.append(f"kafka: cannot reach {config.kafka.bootstrap_servers}: {exc}")
    finally:
        await source.close(args.timeout)
    backend = create_backend(config.backend, types)
    try:
        print(f"backend: {await backend.check()}")
    except Exception as exc:
        problems.append(f"backend: {exc}")
    finally:
        await backend.close()
    _report(args, [f"{source_name}: {problem}" for problem in problems], prefix="")
    if problems:
        return EXIT_FAILURE
    print(f"{source_name}: OK")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``data-ingest`` console script."""
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if args.command == "worker":
        from connector.worker_cli import serve_worker

        tune_gc()
        try:
            return asyncio.run(serve_worker(Path(args.config)))
        except (ConfigError, ValueError) as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_CONFIG
        except ConnectorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    replaying = args.command == "dlq" and args.dlq_command == "replay"
    if args.command != "run" and not replaying:
        # Only `run` and `dlq replay` stop gracefully; the other commands end on a signal as usual.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        if EARLY_SIGNALS:
            return 128 + EARLY_SIGNALS[0]
    if args.command == "schemas":
        return _check_schemas(args)
    if args.command == "config":
        return _config(args)
    if args.command == "plugins":
        return _plugins()
    try:
        config, types = _load(args.config)
        if args.command == "dlq":
            settings = _dlq_settings(config, args.config)
    except ConfigError as exc:
        _report(args, str(exc).splitlines(), prefix="")
        return EXIT_CONFIG
    REDACT.add(secrets_of(config))
    set_connector(config.kafka.group_id)
    try:
        if args.command == "run" or replaying:
            tune_gc()
            return asyncio.run(_run(config, types, args))
        if args.command == "dlq":
            print("\n".join(inspect(config.kafka, settings.topic, args.errors)))
            return EXIT_OK
        print(f"schemas: {len(types)} object types OK ({', '.join(types.names())})")
        return asyncio.run(_validate(config, types, args, args.config))
    except ConnectorError as exc:
        _report(args, [str(exc)])
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
