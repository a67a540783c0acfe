# Arca's entry points. Every target works from a fresh clone: `make test`
# installs the test servers it needs (infra/dev/ensure-tools.sh).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

# One build cache and one tools dir shared by all checkouts of this machine.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/arca/target
export ARCA_TOOLS_DIR ?= $(HOME)/.cache/arca/tools

ARCA := $(CARGO_TARGET_DIR)/release/arca
# `make test TEST_FLAGS="-p arca-testkit"` runs one crate's tests.
TEST_FLAGS ?= --workspace
# Only for the local demo repository of `make run`; use your own for real data.
ARCA_PASSWORD ?= arca-dev-password

.PHONY: run build test lint fmt bench bench-data bench-control-plane bench-services bench-api bench-recovery bench-safety openapi

# The platform on one machine: `arca server` starts its own nats-server (JetStream, store in
# ./var/nats, port 4250), the catalog on SQLite (./var/catalog.db) and the scheduler. A demo
# filesystem repository is created under ./var/repo for the standalone commands.
run:
	infra/dev/ensure-tools.sh >/dev/null
	cargo build --release -p arca-cli --bin arca
	mkdir -p var
	if [ ! -e var/repo ]; then \
		ARCA_PASSWORD='$(ARCA_PASSWORD)' $(ARCA) --repo "fs://$(CURDIR)/var/repo" repo init; \
	fi
	@echo "Demo repository: export ARCA_REPO=fs://$(CURDIR)/var/repo ARCA_PASSWORD=$(ARCA_PASSWORD)"
	@echo "Catalog queries: NATS nats://127.0.0.1:4250, subjects arca.q.catalog.*"
	$(ARCA) server --data-dir var

build:
	cargo build --workspace --release

# Tests talk to real servers: one shared moto (S3) and Azurite for the whole run,
# passed to every test process through ARCA_TEST_*_ENDPOINT; each test that
# needs NATS starts its own nats-server (arca-testkit). Servers that were already
# running before (someone else's `make test`) are left running. The black-box tests
# start every service binary, and `cargo test` builds only the binaries of packages with
# integration tests of their own: build them all first.
test:
	infra/dev/ensure-tools.sh
	already_running=0; \
	infra/dev/test-servers.sh env >/dev/null 2>&1 && already_running=1; \
	infra/dev/test-servers.sh start; \
	[ $$already_running = 1 ] || trap 'infra/dev/test-servers.sh stop' EXIT; \
	eval "$$(infra/dev/test-servers.sh env)"; \
	cargo build --workspace --bins; \
	if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run $(TEST_FLAGS) --no-fail-fast; \
	else \
		cargo test $(TEST_FLAGS) --no-fail-fast; \
	fi

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# The benchmarks; each prints a Markdown table (copy the figures to BENCHMARKS.md).
bench: bench-data bench-control-plane bench-services bench-api bench-recovery bench-safety

# The data path against restic (loadtests/bench.sh --help).
bench-data:
	bash loadtests/bench.sh

# The event store and catalog against the raw JetStream publish rate (a private
# nats-server, SQLite and the local PostgreSQL).
bench-control-plane:
	infra/dev/ensure-tools.sh >/dev/null
	cargo run --release -q -p arca-loadtests --bin bench-control-plane

# The API gateway against a plain actix-web handler: the snapshot list of a tenant with 10,000
# snapshots (rate as a share of hello; p99 at 500 requests/s) and run-now, on SQLite and the
# local PostgreSQL (`bench-api --help`; BENCH_API_FLAGS="--database sqlite" skips PostgreSQL).
bench-api:
	infra/dev/ensure-tools.sh >/dev/null
	cargo run --release -q -p arca-loadtests --bin bench-api -- $(BENCH_API_FLAGS)

# Instant recovery and replication (issue 6): an NBD export of a 1 GiB image snapshot read by
# qemu-io, nbdcopy and qemu-img against a full restore; replica lag of small files and of an
# image changing 1 %/s (a plain file, and one open in qemu-storage-daemon followed through its
# dirty bitmaps) against an incremental backup (`bench-recovery --help`; needs qemu-utils
# and libnbd-bin).
bench-recovery:
	cargo run --release -q -p arca-loadtests --bin bench-recovery -- $(BENCH_RECOVERY_FLAGS)

# The services against the engine CLI: first-backup throughput through `arca server`, schedule →
# start latency of policies firing together, RSS idle and during a backup
# (loadtests/bench-services.sh --help).
bench-services:
	infra/dev/ensure-tools.sh >/dev/null
	bash loadtests/bench-services.sh

# The crash-and-fault campaign: kill -9 at 200 points of backup, copy, forget and prune on a
# filesystem repository and the S3 emulator, concurrent backups (some stopped past their
# lease) against a prune loop for 10 minutes, and 1,000 single-byte flips; prints kills,
# flips, detected, restores byte-identical, data lost (`loadtests/bench-safety.py --help`,
# BENCH_SAFETY_FLAGS="--kills 20 --prune-minutes 1 --flips 50" for a short run).
bench-safety:
	infra/dev/ensure-tools.sh >/dev/null
	cargo build --release -p arca-cli --bin arca
	already_running=0; \
	infra/dev/test-servers.sh env >/dev/null 2>&1 && already_running=1; \
	infra/dev/test-servers.sh start >/dev/null; \
	[ $$already_running = 1 ] || trap 'infra/dev/test-servers.sh stop' EXIT; \
	eval "$$(infra/dev/test-servers.sh env)"; \
	ARCA_BIN=$(ARCA) python3 loadtests/bench-safety.py $(BENCH_SAFETY_FLAGS)

# The gateway's OpenAPI document, generated from the code (a test fails when the committed
# file differs).
openapi:
	mkdir -p openapi
	cargo run -q -p arca-api-gateway --bin arca-gateway -- --print-openapi > openapi/openapi.json
