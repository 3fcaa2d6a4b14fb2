#!/usr/bin/env bash
# `make image`: build the Dockerfile with podman, rootful and daemonless, on a base image made
# here from Debian packages (mmdebstrap with this machine's own apt sources), then run it.
#
#   integration/build_image.sh build     base image (once, cached) + the project image
#   integration/build_image.sh podman ARGS...   podman with the project's storage and config
#
# Everything lives under $DATA_INGEST_CACHE/podman (storage, run root, containers.conf, the
# base tarball). Needs the Debian packages podman, runc, mmdebstrap, uidmap, fuse-overlayfs.
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

build() {
    for tool in podman mmdebstrap runc; do
        command -v "$tool" >/dev/null || { log "missing $tool: apt-get install podman runc mmdebstrap uidmap fuse-overlayfs"; exit 1; }
    done
    if ! podman_ image exists "$base_image"; then
        log "base image $base_image: mmdebstrap bookworm (minbase + python3), ~2 minutes"
        local start=$SECONDS
        mmdebstrap --quiet --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$home/base.tar"
        podman_ import "$home/base.tar" "$base_image" >/dev/null
        rm -f "$home/base.tar"
        log "base image made in $((SECONDS - start)) s"
    fi
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

case "${1:-build}" in
    build) build ;;
    podman) shift; podman_ "$@" ;;
    *) echo "usage: $0 build | podman ARGS..." >&2; exit 2 ;;
esac
