#!/usr/bin/env bash
# Idempotent installer for the database servers used by the integration tests.
#
#  * PostgreSQL server: from Debian's packages (apt-get), only if no
#    /usr/lib/postgresql/*/bin/postgres exists yet.
#  * FerretDB (MongoDB wire protocol; v1.x has an embedded SQLite backend, so it
#    needs no other server): its Go module is fetched through the Go module proxy
#    and built with `go build` into the project cache, only if the binary for
#    $FERRETDB_VERSION is not there yet.
#
# Usage: install_services.sh [all|postgres|ferretdb]   (default: all)
# Cache dir: $DATA_INGEST_CACHE, default <repo>/.cache (gitignored).
# Progress goes to stderr; stdout gets one line per installed server:
#   POSTGRES_BIN=<dir with postgres, initdb, pg_ctl...>
#   FERRETDB_BIN=<path of the ferretdb binary>
set -euo pipefail

what="${1:-all}"
case "$what" in
all | postgres | ferretdb) ;;
*)
    echo "usage: $0 [all|postgres|ferretdb]" >&2
    exit 2
    ;;
esac

FERRETDB_MODULE="github.com/FerretDB/FerretDB"
FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${DATA_INGEST_CACHE:-$repo/.cache}"

log() { echo "[install_services] $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

newest_postgres() {
    printf '%s\n' /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n1
}

install_postgres() {
    if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
        log "PostgreSQL present: $(newest_postgres)"
        echo "POSTGRES_BIN=$(dirname "$(newest_postgres)")"
        return
    fi
    log "PostgreSQL server not found: installing Debian package 'postgresql'"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show postgresql >/dev/null 2>&1; then
        log "package lists lack 'postgresql': running apt-get update"
        as_root apt-get update
    fi
    if ! as_root apt-get install -y --no-install-recommends postgresql; then
        log "install failed: refreshing package lists and retrying"
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends postgresql
    fi
    # The Debian package creates and starts a default cluster (main, port 5432).
    # The tests run their own throwaway clusters, so the default one is not needed;
    # leave it alone (stopping system services is not this script's business).
    log "PostgreSQL installed: $(newest_postgres) ($("$(newest_postgres)" --version))"
    echo "POSTGRES_BIN=$(dirname "$(newest_postgres)")"
}

install_ferretdb() {
    local gobin="$cache/go/bin"
    local bin="$gobin/ferretdb-${FERRETDB_VERSION}"
    if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
        log "FerretDB present: $bin"
        echo "FERRETDB_BIN=$bin"
        return
    fi
    if ! command -v go >/dev/null 2>&1; then
        log "error: 'go' is required to build FerretDB"
        exit 1
    fi
    mkdir -p "$gobin" "$cache/go/mod" "$cache/go/build"
    # Parallel test sessions may all ask for the binary: one builds, the others wait.
    exec 9>"$cache/ferretdb-build.lock"
    flock 9
    if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
        log "FerretDB present (built by a concurrent run): $bin"
        echo "FERRETDB_BIN=$bin"
        return
    fi
    export GOPATH="$cache/go" GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
    export GOFLAGS="-buildvcs=false -modcacherw" CGO_ENABLED=0
    log "building FerretDB ${FERRETDB_VERSION} with $(go version) (about 1-2 minutes cold)"
    local start
    start=$(date +%s)

    # A plain `go install .../cmd/ferretdb@VERSION` builds, but the binary panics at
    # start-up: FerretDB's build/version package requires a generated
    # build/version/version.txt that is not part of the published module. So fetch the
    # module source, copy it to a writable build dir, write version.txt, build there.
    local src
    src="$(cd "$cache" && go mod download -json "${FERRETDB_MODULE}@${FERRETDB_VERSION}" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    if [ -z "$src" ] || [ ! -d "$src" ]; then
        log "error: could not download ${FERRETDB_MODULE}@${FERRETDB_VERSION}"
        exit 1
    fi
    local work="$cache/ferretdb-src-${FERRETDB_VERSION}"
    rm -rf "$work"
    cp -r "$src" "$work"
    chmod -R u+w "$work"
    echo "${FERRETDB_VERSION}" >"$work/build/version/version.txt"
    # Default (non-debug) build: PostgreSQL and SQLite backends are both compiled in.
    (cd "$work" && go build -trimpath -o "$bin.tmp" ./cmd/ferretdb)
    mv -f "$bin.tmp" "$bin"
    rm -rf "$work"

    log "FerretDB built in $(($(date +%s) - start)) s: $bin ($("$bin" --version | head -n1))"
    echo "FERRETDB_BIN=$bin"
}

if [ "$what" = all ] || [ "$what" = postgres ]; then
    install_postgres
fi
if [ "$what" = all ] || [ "$what" = ferretdb ]; then
    install_ferretdb
fi
