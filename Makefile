# data-ingest-connector: `make quickstart` shows it working, `make test` proves it.
#
# Everything downloaded (pip wheels, Maven artifacts for Kafka and the schema registry, Go
# modules for FerretDB) is cached under $(CACHE), which later runs reuse.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE ?= $(CURDIR)/.cache
export DATA_INGEST_CACHE := $(CACHE)
export PIP_CACHE_DIR := $(CACHE)/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv kafka services promlint quickstart test unit integration lint format slow soak bench fuzz image test-image test-containers test-hosted clean

help:
	@echo "make quickstart   start a local Kafka, ingest sample Measurements into SQLite, show them"
	@echo "make test         install what the tests need, lint, run unit and integration tests"
	@echo "make unit         unit tests only (no services)"
	@echo "make lint         ruff check and format check, mypy --strict on connector/"
	@echo "make slow         the tests marked slow (FerretDB fleet chaos, ...): not in make test"
	@echo "make soak         make slow, then bench/chaos.py: >= 100 SIGKILLs and membership changes"
	@echo "make bench        bench/bench.py: ours vs ceilings and peers, 1M records (long)"
	@echo "make fuzz         the dead-letter fuzz at full size: 10,000 poison + 50,000 good records"
	@echo "make image        build the container image with podman (Debian base via mmdebstrap)"
	@echo "make test-image   make image, then run it against Kafka and PostgreSQL"
	@echo "make test-containers  core delivery tests with Kafka started through testcontainers"
	@echo "make test-hosted  the delivery tests with each connector hosted as a worker hosts it"
	@echo "make promlint     build the linter behind promtool check metrics (Go, ~30 s)"
	@echo "make clean        remove the virtualenv (the download cache $(CACHE) is kept)"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

venv: $(BIN)/.installed

# Kafka 4.x broker jars from Maven Central, resolved with mvn into $(CACHE).
kafka: venv
	$(BIN)/python -m integration.kafka_broker fetch

# PostgreSQL (Debian package) and FerretDB (built from the Go module proxy).
services:
	bash integration/install_services.sh all

quickstart: venv kafka
	$(BIN)/python -m integration.quickstart

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

unit: venv
	$(BIN)/python -m pytest -ra tests

integration: venv kafka services
	$(BIN)/python -m pytest -ra integration

# -ra lists every skipped test with its reason; pytest exits non-zero when no test is
# collected, so an empty run cannot pass. Tests marked slow (minutes each) are deselected
# here, and pytest says how many: they run in `make slow`.
test: venv kafka services lint promlint
	PROMLINT=$(PROMLINT) $(BIN)/python -m pytest -ra --durations=30 -m "not slow" tests integration

# The linter behind `promtool check metrics` (client_golang's promlint), built in ~30 s from
# the Go module proxy; promtool itself would build the whole Prometheus server (> 15 min).
PROMLINT := $(CACHE)/bin/promlint
promlint: $(PROMLINT)
$(PROMLINT): integration/promlint/main.go integration/promlint/go.mod integration/promlint/go.sum
	cd integration/promlint && GOPATH=$(CACHE)/go GOMODCACHE=$(CACHE)/go/mod \
		GOCACHE=$(CACHE)/go/build GOFLAGS="-buildvcs=false -modcacherw" CGO_ENABLED=0 \
		go build -o $(PROMLINT) .

# The tests marked slow: FerretDB's fleet chaos, aiokafka's fleet chaos with derived ids.
slow: venv kafka services
	$(BIN)/python -m pytest -ra -m slow tests integration

# Not part of `make test`: it runs for minutes. The slow tests, then the soak script,
# which prints lost / duplicated / conflicts.
soak: venv kafka services slow
	$(BIN)/python bench/chaos.py

# Not part of `make test`: the side-by-side benchmark (issue 8), 1M records, tens of minutes.
# Writes bench/results/<date>.json and .png and rewrites README's generated Performance part.
BENCH_ARGS ?=
bench: venv kafka services
	$(BIN)/python bench/bench.py --update-readme $(BENCH_ARGS)

# Not part of `make test` at this size (the suite runs 1,000 + 5,000): minutes per backend.
fuzz: venv kafka services
	DATA_INGEST_FUZZ=full $(BIN)/python -m pytest -ra -s integration/test_fuzz_dead_letters.py

# Not part of `make test`: needs podman, runc and mmdebstrap (Debian packages) and takes
# minutes the first time (the base image). See integration/build_image.sh.
image:
	bash integration/build_image.sh build

test-image: venv kafka services image
	DATA_INGEST_TEST_IMAGE=1 $(BIN)/python -m pytest -ra -s integration/test_image.py

# The core delivery tests with their Kafka started through testcontainers: podman serves the
# Docker API, the broker image is built here from Kafka's Maven jars on an mmdebstrap base
# with a JRE. Not part of `make test`, so that it stays well under 30 minutes: the base takes
# ~2 minutes to make the first time and these tests run again what `make test` runs against
# the local broker (~8 minutes). CI runs it after `make test` (.ci/run).
CONTAINER_TESTS := integration/test_containers.py integration/test_sqlite_pipeline.py \
	integration/test_backends.py integration/test_dead_letters.py integration/test_worker.py
test-containers: venv kafka services
	bash integration/build_image.sh kafka "$$($(BIN)/python -m integration.kafka_broker fetch)"
	DATA_INGEST_KAFKA=testcontainers bash integration/build_image.sh with-docker-api \
		$(BIN)/python -m pytest -ra -m "not slow" $(CONTAINER_TESTS)

# The delivery tests again with every `data-ingest run` hosted the way a worker hosts a
# connector (--rest-listen: HostedConnector, its task, the REST API). Not part of `make test`
# (it runs those tests a second time, ~12 minutes).
HOSTED_TESTS := integration/test_sqlite_pipeline.py integration/test_backends.py \
	integration/test_dead_letters.py integration/test_faults.py integration/test_avro_pipeline.py \
	integration/test_dlq_replay.py integration/test_postgres_backend.py \
	integration/test_registry_errors.py integration/test_fuzz_dead_letters.py
test-hosted: venv kafka services
	DATA_INGEST_TEST_HOSTED=1 $(BIN)/python -m pytest -ra -m "not slow" $(HOSTED_TESTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
