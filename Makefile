# bdc — the two commands a newcomer needs are `make demo` and `make test`.
# One persistent target dir outside the clone, shared by sessions and CI, so builds stay warm.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/bdc-target
export CARGO_TERM_COLOR ?= never
CARGO ?= cargo
# the heavy optional parts `make test` still builds and tests: SQL jobs on Ballista
TEST_FEATURES ?= --features ballista
FORGE := $(CURDIR)/contracts/node_modules/@foundry-rs/forge-linux-amd64/bin/forge

.PHONY: all build tools test fmt-check clippy doc-check layering unit examples demo bench contracts contracts-test gas devnet reliability reliability-short

all: build

build:
	$(CARGO) build --workspace --all-targets

## tools: the pinned npm toolchain (anvil, forge, solc-js, OpenZeppelin) in contracts/node_modules,
## runc + busybox-static for the compute-job sandbox and its tests, and chromium for the web-page tests
tools: contracts/node_modules/.package-lock.json
	bash scripts/ensure_sandbox.sh
	bash scripts/ensure_chromium.sh

contracts/node_modules/.package-lock.json: contracts/package.json contracts/package-lock.json
	cd contracts && npm ci --no-audit --no-fund
	@touch $@

## test: everything CI runs — toolchain, formatting, lints, crate layering, contracts, all tests
test: tools fmt-check clippy doc-check layering contracts-test unit examples reliability-short

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets $(TEST_FEATURES) -- -D warnings

## doc-check: the crates' rustdoc builds without a warning (broken links, stray HTML)
doc-check:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace $(TEST_FEATURES)

layering:
	python3 scripts/check_layering.py

unit:
	BDC_REQUIRE_CHROMIUM=1 bash scripts/with_postgres.sh bash scripts/test_summary.sh $(CARGO) test --workspace $(TEST_FEATURES) --no-fail-fast

## contracts: compile with forge (solc-js, offline) and refresh the committed artifacts
contracts: tools
	cd contracts && $(FORGE) build && node scripts/export-artifacts.cjs

## contracts-test: forge fmt check, unit/fuzz/invariant tests, and artifacts unchanged by a rebuild
contracts-test: contracts
	cd contracts && $(FORGE) fmt --check && $(FORGE) test
	@if [ -n "$$(git status --porcelain -- contracts/artifacts)" ]; then \
	  git status --short -- contracts/artifacts; \
	  echo "contracts/artifacts differ from a fresh build: run 'make contracts' and commit them"; exit 1; \
	fi

## gas: forge's gas report (copied into docs/CONTRACTS.md)
gas: tools
	cd contracts && $(FORGE) test --gas-report --no-match-contract Invariant

## devnet: anvil + deployed contracts + funded accounts, until Ctrl-C
devnet: tools
	$(CARGO) run --bin bdc -- devnet

## demo: publish -> serve -> fetch on this machine (loopback only)
demo: tools
	$(CARGO) build --bin bdc
	bash scripts/demo.sh "$(CARGO_TARGET_DIR)/debug/bdc"

## examples: the runnable examples of examples/ (sql_job runs its jobs with the debug `bdc`
## binary, built here as the tests build it: with their features, so nothing is rebuilt)
examples:
	$(CARGO) test $(TEST_FEATURES) --no-run --test it
	$(CARGO) run $(TEST_FEATURES) --example publish_fetch
	$(CARGO) run $(TEST_FEATURES) --example sql_job

## reliability-short: a few seconds of each campaign (after `unit`, which builds the debug binary)
reliability-short:
	MAX_DELAY=0.6 bash scripts/faults/paid_fetch_kills.sh "$(CARGO_TARGET_DIR)/debug/bdc" 4 32
	BLOCKS=600 ROUND_BLOCKS=100 bash scripts/faults/market_kills.sh "$(CARGO_TARGET_DIR)/debug/bdc" 2 30
	bash scripts/faults/paid_job_kills.sh "$(CARGO_TARGET_DIR)/debug/bdc" 2
	bash scripts/faults/chain_stalls.sh "$(CARGO_TARGET_DIR)/debug/bdc" 2 64
	bash scripts/load/provider_fetchers.sh "$(CARGO_TARGET_DIR)/debug/bdc" 4 16
	bash scripts/load/paid_buyers.sh "$(CARGO_TARGET_DIR)/debug/bdc" 4 4
	bash scripts/load/soak.sh "$(CARGO_TARGET_DIR)/debug/bdc" 20 2

## reliability: the heavy campaigns (property fuzzing with many cases, market load with wrk);
## `make test` runs the same fuzz properties with few cases. Figures: docs/RELIABILITY.md
reliability: tools
	TEST_FEATURES="$(TEST_FEATURES)" bash scripts/reliability.sh

## bench: throughput tables (release build; BENCH_PROFILE=fastbench for iterations), peers
## installed pinned into $(BENCH_TOOLS); see docs/BENCHMARKS.md
BENCH_TOOLS ?= $(HOME)/.cache/bdc-bench-tools
BENCH_PROFILE ?= release
bench: tools
	$(CARGO) build --profile $(BENCH_PROFILE) --bin bdc
	$(CARGO) build --profile $(BENCH_PROFILE) -p bdc-bench --bin bdc-bench
	test -x "$(BENCH_TOOLS)/bin/sendme" || $(CARGO) install sendme@0.37.1 --locked --root "$(BENCH_TOOLS)"
	bash scripts/bench/fetch_vs_sendme.sh "$(CARGO_TARGET_DIR)/$(BENCH_PROFILE)/bdc" "$(BENCH_TOOLS)/bin/sendme" $${BENCH_MIB:-1024} $${BENCH_ROUNDS:-5}
	bash scripts/bench/multi_source.sh "$(CARGO_TARGET_DIR)/$(BENCH_PROFILE)/bdc" 512 100mbit 2
	bash scripts/bench/multi_source.sh "$(CARGO_TARGET_DIR)/$(BENCH_PROFILE)/bdc" 512 100mbit,50mbit,10mbit 2
	"$(CARGO_TARGET_DIR)/$(BENCH_PROFILE)/bdc-bench" transfer --paid --size-mib $${BENCH_MIB:-1024}
	"$(CARGO_TARGET_DIR)/$(BENCH_PROFILE)/bdc-bench" transfer --paid --size-mib $${BENCH_MIB:-1024} --window-kib 131072 --receipt-every-kib 16384
	bash scripts/with_postgres.sh "$(CARGO_TARGET_DIR)/$(BENCH_PROFILE)/bdc-bench" market --listings $${BENCH_LISTINGS:-100000}
	bash scripts/ensure_sandbox.sh
	python3 -c "import duckdb" 2>/dev/null || python3 -m pip install --quiet duckdb==2.0.1
	"$(CARGO_TARGET_DIR)/$(BENCH_PROFILE)/bdc-bench" compute --rows $${BENCH_ROWS:-20000000} --rounds 5
