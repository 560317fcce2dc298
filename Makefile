# automation-engine: the commands a newcomer and CI need. `make run` and `make test` do all set-up.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Tests build the worker with its test-only fault hooks (a crash after COMMIT, a handler panic).
TEST_FEATURES := --features automation-worker/fault-injection
# `make test` leaves out the fault suite (`make chaos`) and the cluster and DR drills (test
# binaries named drill_*, each with a target of its own); nextest refuses a filter naming no binary.
DRILLS := $(wildcard worker/tests/drill_*/main.rs)
TEST_FILTER := not binary(chaos)$(if $(DRILLS), and not binary(/^drill_/))
# The advisory checker, installed into the cargo bin directory on first use.
CARGO_DENY_VERSION := 0.20.2

.PHONY: help deps build run test chaos drill-rabbitmq-cluster fuzz-api check check-advisories check-deploy check-interfaces bench bench-compare schemas drill-galera drill-dr

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

deps: ## make sure RabbitMQ and MariaDB answer on 127.0.0.1 (start or install them if needed)
	@scripts/local-services.sh
	@command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
	@scripts/cloudevents-sdk/install.sh
	@command -v promtool >/dev/null 2>&1 || { echo "installing promtool (Debian's prometheus package) for the metrics tests…"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
		|| { echo "error: the metrics tests need promtool: apt-get install prometheus"; exit 1; }

build: ## build both binaries
	cargo build --workspace --bins

run: deps build ## run the API and the worker on the local services (migrations and topology included)
	@scripts/run-local.sh

test: deps ## run every test against the real RabbitMQ and MariaDB (the fault suite is make chaos)
	cargo nextest run --workspace $(TEST_FEATURES) --profile ci -E '$(TEST_FILTER)'

chaos: deps ## the fault suite: kills, crashes and outages under load, with tallies
	@mkdir -p .local
	@scripts/chaos.sh

drill-rabbitmq-cluster: deps ## a 3-node RabbitMQ cluster of its own: the commands leader SIGKILLed, then a rolling restart, under API and Spring-style load (~2 min)
	cargo nextest run --workspace $(TEST_FEATURES) --profile drill -E 'binary(drill_rabbitmq_cluster)'
drill-galera: deps ## a 3-node MariaDB Galera cluster behind HAProxy: node killed under load (IST, SST), two workers through two nodes (~3 min)
	@command -v haproxy >/dev/null 2>&1 && [ -e /usr/lib/galera/libgalera_smm.so ] && command -v rsync >/dev/null 2>&1 && command -v socat >/dev/null 2>&1 \
		|| { echo "installing galera-4, haproxy, rsync and socat (Debian packages) for the Galera drill…"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends galera-4 haproxy rsync socat >/dev/null; } \
		|| { echo "error: the Galera drill needs galera-4, haproxy, rsync and socat: apt-get install galera-4 haproxy rsync socat"; exit 1; }
	cargo nextest run --workspace $(TEST_FEATURES) --profile drill -E 'binary(drill_galera) or binary(drill_galera_api)'

drill-dr: deps ## the DR drill: two regions on this machine, the primary killed, failover.sh, failback.sh; RPO, RTO, tally
	@mkdir -p .local
	@scripts/drill-dr.sh

fuzz-api: deps ## schemathesis against the API's OpenAPI document
	@scripts/fuzz-api.sh

check: ## formatting, clippy, the rustls-on-ring-only dependency rule, known advisories, deploy files and the interface documents
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets $(TEST_FEATURES) -- -D warnings
	@scripts/check-dependencies.sh
	@$(MAKE) --no-print-directory check-advisories
	@$(MAKE) --no-print-directory check-deploy
	@scripts/check-interfaces.sh

check-advisories: ## RustSec advisories in Cargo.lock (cargo-deny; exceptions with reasons in deny.toml)
	@command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny --version $(CARGO_DENY_VERSION)
	@scripts/check-advisories.sh

check-interfaces: ## schemas/: OpenAPI (openapi-spec-validator, Spectral, openapi-typescript + tsc), AsyncAPI (@asyncapi/parser), Java from the event schemas (quicktype + javac, Jackson round trip)
	@scripts/check-interfaces.sh

check-deploy: ## k8s/ overlays rendered, validated, linted and started on the local services; alerts, dashboard, Dockerfile, compose
	@scripts/local-services.sh
	@scripts/check-deploy.sh

bench: deps ## worker throughput: one event per transaction against batches of 100; competing against partitioned
	cargo bench -p automation-worker --bench throughput

bench-compare: deps ## the release worker and API against a Celery worker and a FastAPI app doing the same, interleaved: ratio lines (not in CI; ~8 min)
	@bench/compare.sh

schemas: ## regenerate schemas/ (JSON Schemas, AsyncAPI, OpenAPI) from the Rust types
	UPDATE_SCHEMAS=1 cargo test -p automation-shared --lib committed_schemas_match_the_rust_types
	UPDATE_SCHEMAS=1 cargo test -p automation-api --lib committed_openapi_matches_the_handlers
