# The data-ingest-connector image: `data-ingest worker` by default.
#
#   podman build -t localhost/data-ingest-connector:0.1.0 .        (or docker build)
#   podman build --build-arg BASE_IMAGE=localhost/python-bookworm:3.11 ...
#
# BASE_IMAGE is any Debian-based image with python3 >= 3.11 (pip and venv included), e.g.
# the official python:3.x-slim images. Both stages use it, so the wheels built in the first
# stage match the interpreter of the second.
ARG BASE_IMAGE=python:3.12-slim-bookworm

# --- stage 1: the project's wheel and the wheels of its dependencies -------------------
FROM ${BASE_IMAGE} AS build
# Optional, for a build behind a proxy with its own CA or a package index of its own
# (`--build-arg PIP_CERT=... --build-arg PIP_INDEX_URL=...`); they stay in this stage.
ARG PIP_CERT
ARG PIP_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
RUN python3 -m pip wheel --wheel-dir /wheels .

# --- stage 2: the runtime -----------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG UID=10001
# No .pyc writes at run time (the root filesystem is read-only in the Helm chart; the
# bytecode is compiled below), unbuffered logs, and a HOME that is the /tmp emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    PATH=/opt/data-ingest/bin:$PATH
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/data-ingest \
    && /opt/data-ingest/bin/pip install --no-index --find-links /wheels data-ingest-connector \
    && /opt/data-ingest/bin/python -m compileall -q /opt/data-ingest \
    && rm -rf /wheels \
    && groupadd --system --gid "${UID}" data-ingest \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /tmp --shell /usr/sbin/nologin data-ingest \
    && mkdir -p /etc/data-ingest /var/lib/data-ingest \
    && chown "${UID}:${UID}" /var/lib/data-ingest
# Config (worker.yaml, connectors/, avro/) is mounted at /etc/data-ingest; SQLite files go
# to the volume at /var/lib/data-ingest. Nothing else is written: with a read-only root
# filesystem only those and /tmp need to be writable.
WORKDIR /var/lib/data-ingest
USER ${UID}:${UID}
EXPOSE 8083
# `data-ingest` is PID 1 and needs no init: its entry point (connector/entry.py) catches
# SIGTERM from its first instant and the worker stops every connector cleanly on it (commit,
# leave the group, exit 0). It starts no child processes, so there are no zombies to reap.
STOPSIGNAL SIGTERM
ENTRYPOINT ["data-ingest"]
CMD ["worker", "-c", "/etc/data-ingest/worker.yaml"]
