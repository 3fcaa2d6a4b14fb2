#!/usr/bin/env bash
# `make image`: build the Dockerfile with podman, rootful and daemonless, on a base image made
# here from Debian packages (mmdebstrap with this machine's own apt sources), then run it.
#
#   integration/build_image.sh build     base image (once, cached) + the project image
#   integration/build_image.sh kafka LIBS_DIR   the Kafka broker image of make test-containers
#   integration/build_image.sh with-docker-api CMD...   CMD with podman's Docker API
#   integration/build_image.sh podman ARGS...   podman with the project's storage and config
#
# Everything lives under $DATA_INGEST_CACHE/podman (storage, run root, containers.conf, the
# base tarball). Needs the Debian packages podman, runc, mmdebstrap, uidmap, fuse-overlayfs,
# installed with apt-get when a tool is missing (CI starts without them).
# No image registry is used: every image is local (localhost/...).
set -euo pipefail

cache="${DATA_INGEST_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}"
home="$cache/podman"
base_image="localhost/data-ingest-base:bookworm"
image="localhost/data-ingest-connector:${IMAGE_TAG:-0.1.0}"
mkdir -p "$home/root" "$home/runroot"

# This sandbox cannot raise the default ulimits podman asks for, and crun fails on its
# hybrid cgroups; runc works.
cat > "$home/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$home/containers.conf"

podman_() { podman --root "$home/root" --runroot "$home/runroot" "$@"; }

log() { printf '==> %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Install the Debian packages podman needs here unless its tools are all on PATH.
tools_once() {
    local missing=()
    for tool in podman mmdebstrap runc newuidmap fuse-overlayfs; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local packages=(podman runc mmdebstrap uidmap fuse-overlayfs)
    log "missing ${missing[*]}: installing the Debian packages ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y --no-install-recommends "${packages[@]}"; then
        log "install failed: refreshing package lists and retrying"
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends "${packages[@]}"
    fi
}

# Check the tools, then make the base image IMAGE from Debian packages PACKAGES (mmdebstrap
# with this machine's own apt sources) unless it exists.
base_image_once() {
    local image="$1" packages="$2"
    tools_once
    podman_ image exists "$image" && return 0
    log "base image $image: mmdebstrap bookworm (minbase + $packages), ~2 minutes"
    local start=$SECONDS tarball="$home/base-$$.tar"
    mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$tarball"
    podman_ import "$tarball" "$image" >/dev/null
    rm -f "$tarball"
    log "base image made in $((SECONDS - start)) s"
}

build() {
    base_image_once "$base_image" python3,python3-venv,python3-pip,ca-certificates
    local start=$SECONDS
    local args=(--build-arg "BASE_IMAGE=$base_image" --network host -t "$image")
    # Behind a TLS-intercepting proxy pip needs the host's CA bundle: pass it through.
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
        args+=(--volume "$PIP_CERT:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem)
    fi
    if [ -n "${PIP_INDEX_URL:-}" ]; then args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"); fi
    log "podman build $image"
    podman_ build "${args[@]}" "$(cd "$(dirname "$0")/.." && pwd)"
    log "built $image in $((SECONDS - start)) s; size: $(podman_ image inspect --format '{{.Size}}' "$image") bytes"
}

# The Kafka broker image of `make test-containers`: a Debian base with a JRE (mmdebstrap,
# once, cached), then Apache Kafka's jars from the Maven cache (integration/kafka_broker.py
# fetch) and the entrypoint of integration/kafka-image/.
kafka_version="${KAFKA_VERSION:-4.1.1}"
kafka_base="localhost/data-ingest-kafka-base:bookworm"
kafka_image="localhost/data-ingest-kafka:$kafka_version"

build_kafka() {
    base_image_once "$kafka_base" openjdk-17-jre-headless
    local libs="$1" start=$SECONDS context
    context="$(mktemp -d)"
    trap 'rm -rf "$context"' RETURN
    cp -r "$libs" "$context/libs"
    cp "$(dirname "$0")/kafka-image/entrypoint.sh" "$(dirname "$0")/kafka-image/Containerfile" "$context/"
    log "podman build $kafka_image"
    podman_ build --quiet --build-arg "BASE_IMAGE=$kafka_base" -t "$kafka_image" \
        -f "$context/Containerfile" "$context" >/dev/null
    log "built $kafka_image in $((SECONDS - start)) s; size: $(podman_ image inspect --format '{{.Size}}' "$kafka_image") bytes"
}

# Run a command with a Docker API (podman's) that testcontainers can use, then stop it.
with_docker_api() {
    tools_once
    local socket="$home/docker-api.sock"
    rm -f "$socket"
    podman --root "$home/root" --runroot "$home/runroot" system service --time=0 \
        "unix://$socket" &
    docker_api_pid=$!
    trap 'kill "${docker_api_pid:-}" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
    [ -S "$socket" ] || { log "podman system service did not open $socket"; exit 1; }
    # No image registry here: Ryuk (testcontainers' reaper) cannot be pulled, and the fixture
    # stops its container itself. This machine has /.dockerenv, which would make
    # testcontainers believe it runs inside a container.
    local status=0
    DOCKER_HOST="unix://$socket" TESTCONTAINERS_RYUK_DISABLED=true \
        TESTCONTAINERS_CONNECTION_MODE=docker_host KAFKA_TESTCONTAINERS_IMAGE="$kafka_image" \
        "$@" || status=$?
    kill "$docker_api_pid" 2>/dev/null || true
    wait "$docker_api_pid" 2>/dev/null || true
    rm -f "$socket"
    return "$status"
}

case "${1:-build}" in
    build) build ;;
    kafka) shift; build_kafka "$@" ;;
    with-docker-api) shift; with_docker_api "$@" ;;
    podman) shift; podman_ "$@" ;;
    *) echo "usage: $0 build | kafka LIBS_DIR | with-docker-api CMD... | podman ARGS..." >&2; exit 2 ;;
esac
