"""Where the harness's downloaded servers live, and how they get there (Maven, once).

Why one module: the Kafka broker and the schema registry both run from Maven Central
artifacts on a JVM. They share the cache directory (env ``DATA_INGEST_CACHE``, default
``<repo>/.cache``), the java/mvn lookup, Maven's local repository (``<cache>/m2``) and the
rule that an install is done once, under a file lock, and only counts when it finished
(parallel test sessions and an interrupted download must not leave a half install in use).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

COMPLETE_MARKER = ".complete"
"""File written last into an install dir: its stamp and the files the install must have."""


class ArtifactError(RuntimeError):
    """A tool is missing, or fetching or installing an artifact failed."""


def cache_dir() -> Path:
    """Project cache dir: env ``DATA_INGEST_CACHE`` or ``<repo>/.cache`` (gitignored)."""
    env = os.environ.get("DATA_INGEST_CACHE")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".cache"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (created if needed), held inside the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def find_executable(name: str, env_var: str, java_home_relative: str | None = None) -> str:
    """Locate a tool: explicit env var, then ``$JAVA_HOME/<java_home_relative>``, then PATH."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    java_home = os.environ.get("JAVA_HOME")
    if java_home_relative and java_home:
        candidate = Path(java_home) / java_home_relative
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ArtifactError(f"{name!r} not found (set {env_var} or put it on PATH)")
    return found


def java_executable() -> str:
    """The ``java`` to run servers with: env ``JAVA``, ``$JAVA_HOME/bin/java``, or PATH."""
    return find_executable("java", "JAVA", "bin/java")


def run_maven(pom: Path, *args: str, cache: Path, what: str) -> None:
    """Run ``mvn -B -q -f POM ARGS`` with Maven's local repository in ``<cache>/m2``.

    Raises ArtifactError quoting the command and the end of its output if mvn fails.
    """
    cmd = [
        find_executable("mvn", "MVN"),
        "-B",
        "-q",
        "-f",
        str(pom),
        f"-Dmaven.repo.local={cache / 'm2'}",
        *args,
    ]
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-4000:]
        raise ArtifactError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}")


def _complete(target: Path, stamp: str) -> bool:
    """True when ``target`` holds a finished install with this stamp and all its files."""
    try:
        info = json.loads((target / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = info.get("files")
    return (
        info.get("stamp") == stamp
        and isinstance(files, list)
        and all((target / f).is_file() for f in files)
    )


def install_once(target: Path, stamp: str, build: Callable[[Path], Sequence[str]]) -> Path:
    """Make ``target`` once per ``stamp`` (e.g. a version), safely across processes.

    ``build(staging)`` fills an empty staging dir next to ``target`` and returns the paths
    (relative to it) of the files a usable install must have. Under a file lock, the staging
    dir gets a marker naming the stamp and those files, and is renamed to ``target``. Later
    calls return at once while the marker matches and those files exist.
    """
    if _complete(target, stamp):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if _complete(target, stamp):
            return target
        staging = target.parent / f".{target.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            files = sorted(build(staging))
            marker = {"stamp": stamp, "files": files}
            (staging / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
