# rfaas: the two commands of the README's Quick start are `make demo` and `make test`.
# Both run scripts/setup.sh first (idempotent: installs only missing system packages, Rust if
# absent, and the Python requirements of analysis/), then build with all features.
#
#   make demo    set up, build (release, all features), run the main job, save its CSV in results/
#   make test    set up, build (all features), run the whole test suite (cargo + pytest of
#                analysis/ and of the Python package python/)
#   make lint    rustfmt check, clippy with warnings denied, and the function library's
#                dependencies (no runtime: `check-function-deps`); CI runs it before `make test`
#   make bench   the fabric floor benchmark with more iterations (no setup; builds if needed);
#                `cargo bench` runs the micro-benchmarks of benches/ (no I/O) instead
#   make install PREFIX=DIR   the C API: librfaas.{so,a}, rfaas.h, rfaas.f90, rfaas.pc (no setup)
#   make bench-capi   warm invocations from C against the Rust client, same cluster, same run
#   make bench-rm     the resource manager under load (simulated nodes and leases; RM_LOAD)
#   make clean   remove build outputs and results

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := demo
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO        ?= cargo
FEATURES     ?= --all-features
# cargo test threads: the machines this runs on have 2 cores, and many tests run two processes
TEST_THREADS ?= 2
PYTHON       ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
RESULTS      ?= results

# `make bench`: the fabric floor benchmark alone. Sizes in bytes; each size stops after
# BENCH_MAX_TIME seconds whatever BENCH_ITERS says, so the demo ends in well under 2 minutes.
BENCH_PROVIDERS ?= shm-raw,shm,tcp-raw,tcp,memcpy
BENCH_SIZES     ?= 64,4096,1048576
BENCH_ITERS     ?= 20000
BENCH_WARMUP    ?= 1000
BENCH_MAX_TIME  ?= 2
# `make bench`: the same modes, more iterations
BENCH_ITERS_FULL    ?= 200000
BENCH_MAX_TIME_FULL ?= 5
PINGPONG        := target/release/fabric_pingpong

# `make install`: where the C API goes (lib/, include/, lib/pkgconfig/rfaas.pc).
PREFIX          ?= /usr/local

.PHONY: setup build build-debug demo test lint check-function-deps bench bench-capi bench-rm install clean

setup:
	scripts/setup.sh

build: setup
	$(CARGO) build --release $(FEATURES) --workspace --bins --examples --lib

build-debug: setup
	$(CARGO) build $(FEATURES) --workspace --bins --examples --lib

# Runs the benchmark binary with $(1)=iterations $(2)=max seconds per size. CSV goes to
# $(RESULTS)/fabric_pingpong-<time>.csv (and fabric_pingpong.csv, the latest), stderr (summary,
# errors) to the .summary.txt next to it; both are printed afterwards, the CSV as a table.
define run_pingpong
	@mkdir -p $(RESULTS)
	@stamp=$$(date +%Y%m%d-%H%M%S); \
	csv=$(RESULTS)/fabric_pingpong-$$stamp.csv; \
	summary=$${csv%.csv}.summary.txt; \
	echo "running: fabric_pingpong --provider $(BENCH_PROVIDERS) --sizes $(BENCH_SIZES) --iterations $(1) --max-time-per-size $(2)"; \
	status=0; \
	$(PINGPONG) --provider $(BENCH_PROVIDERS) --sizes $(BENCH_SIZES) --iterations $(1) \
	    --warmup $(BENCH_WARMUP) --max-time-per-size $(2) > $$csv 2> $$summary || status=$$?; \
	cp $$csv $(RESULTS)/fabric_pingpong.csv; \
	echo; echo "fabric round trips in ns (CSV: $$csv):"; \
	awk -F, '{ printf "  %-8s %14s %10s %10s %10s %10s\n", $$1, $$2, $$3, $$4, $$5, $$6 }' $$csv; \
	echo; cat $$summary; \
	exit $$status
endef

demo: build
	RESULTS=$(RESULTS) scripts/demo.sh

bench:
	$(CARGO) build --release $(FEATURES) --bin fabric_pingpong
	$(call run_pingpong,$(BENCH_ITERS_FULL),$(BENCH_MAX_TIME_FULL))

# The C API (bindings/c, release): libraries, header, Fortran module source and rfaas.pc.
install:
	$(CARGO) build --release $(FEATURES) --workspace --lib
	scripts/install-capi.sh "$(PREFIX)" target/release

# C client vs Rust client, hot executor, 64 B (SIZES, REPETITIONS, ROUNDS: environment).
bench-capi:
	$(CARGO) build --release $(FEATURES) --workspace --bins --lib
	@mkdir -p $(RESULTS)
	scripts/capi-bench.sh target/release $(RESULTS)/capi-bench-$$(date +%Y%m%d-%H%M%S).csv

# The resource manager at cluster scale (rm_load_benchmark): flags in RM_LOAD, the issue's
# targets by default; CSV rows in results/.
RM_LOAD ?= --nodes 10000 --leases 100000 --clients 64 --cycles 100000
bench-rm:
	$(CARGO) build --release $(FEATURES) --bin rfaas --bin rm_load_benchmark
	@mkdir -p $(RESULTS)
	target/release/rm_load_benchmark $(RM_LOAD) \
		--output $(RESULTS)/rm-load-$$(date +%Y%m%d-%H%M%S).csv

test: build-debug
	$(CARGO) test --workspace $(FEATURES) --no-fail-fast -- --test-threads=$(TEST_THREADS)
	if [ -d analysis/tests ]; then $(PYTHON) -m pytest -q analysis/tests; fi
	if [ -d python/tests ]; then $(PYTHON) -m pytest -q python/tests; fi

lint: setup check-function-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings

# A function library depends on rfaas-function alone: building jobs/functions (or the test
# library jobs/stateful) must compile no async runtime, HTTP stack or fabric layer. Lists their
# normal and build dependencies and fails on any of these crates.
FUNCTION_FORBIDDEN_DEPS := tokio|axum|hyper|ureq|rfaas|libloading|nix
check-function-deps:
	@for pkg in rfaas-functions rfaas-stateful; do \
	deps=$$($(CARGO) tree -p $$pkg -e normal,build --prefix none --format '{p}' | awk '{print $$1}' | sort -u); \
	bad=$$(grep -xE '$(FUNCTION_FORBIDDEN_DEPS)' <<<"$$deps" || true); \
	if [ -n "$$bad" ]; then echo "$$pkg must depend on rfaas-function alone; it pulls in: $$bad"; exit 1; fi; \
	echo "check-function-deps: $$pkg builds with:" $$deps; \
	done
	@# The applications bring their codecs and tract, but no platform runtime either.
	@for pkg in rfaas-thumbnailer rfaas-classifier; do \
	deps=$$($(CARGO) tree -p $$pkg -e normal,build --prefix none --format '{p}' | awk '{print $$1}' | sort -u); \
	bad=$$(grep -xE '$(FUNCTION_FORBIDDEN_DEPS)' <<<"$$deps" || true); \
	if [ -n "$$bad" ]; then echo "$$pkg must not depend on the platform's runtime; it pulls in: $$bad"; exit 1; fi; \
	echo "check-function-deps: $$pkg builds with $$(wc -w <<<"$$deps") crates, none of: $(FUNCTION_FORBIDDEN_DEPS)"; \
	done

clean:
	$(CARGO) clean
	rm -rf $(RESULTS)
