# Two set-up commands work on a fresh machine: `make demo` and `make test`.
# Everything else they need (.venv, maturin, pytest, uvloop) is installed on the way.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(abspath $(VENV)/bin/python)
# Build every PyO3 crate against the venv's interpreter, so cargo and maturin share one build.
export PYO3_PYTHON := $(VPY)
# Embedded-interpreter binaries (tests, the demo) load this interpreter's libpython, not another
# copy the system may have.
PY_LIBDIR := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
export LD_LIBRARY_PATH := $(PY_LIBDIR)$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH))
PYTEST := $(VENV)/bin/pytest
PYTEST_ARGS ?=
# Every CPython the project supports: `make test-all-pythons` runs the pytest suite on each, in
# its own venv (.venv-3.X) and target directory (target/py3X). Each is found through pyenv or PATH
# (`make PYTHON_3.12=/path/to/python3.12` overrides); a missing one fails the target.
ALL_PYTHONS := 3.9 3.10 3.11 3.12 3.13
find_python = $(shell for p in $$(pyenv prefix $(1) 2>/dev/null)/bin/python$(1) $$(command -v python$(1)); do "$$p" -c 'import sys; assert "%d.%d" % sys.version_info[:2] == "$(1)"' 2>/dev/null && echo "$$p" && break; done)
# The oldest one also runs in `make test` (its asyncio and its finalization differ).
PYTHON_OLDEST ?= $(call find_python,3.9)
$(foreach v,$(ALL_PYTHONS),$(eval PYTHON_$(v) ?= $$(call find_python,$(v))))
PYTHON_3.9 = $(PYTHON_OLDEST)

.PHONY: help demo test lint test-rust test-async-std test-attributes test-props test-nopool test-python test-python-threadsafe test-python-oldest test-all-pythons build-ext venv bench

help:
	@echo "make demo   - a runnable tour of the bridge (asserts every step)"
	@echo "make test   - every suite: fmt, clippy, cargo tests (also async-std, the attributes and the rename fixture, and without PyO3's reference pool), proptests, pytest also on CPython 3.9, pytest under asyncio, uvloop and rloop, both wakeup modes"
	@echo "make test-all-pythons - the pytest suite on every CPython 3.9-3.13 (asyncio, uvloop and rloop where it has wheels)"
	@echo "make bench  - benchmarks vs pyo3-async-runtimes, PyO3 async fn and asyncio (release build, ~2-3 min); writes BENCHMARKS.md"

# What every test venv holds. rloop (an asyncio loop written in Rust) ships wheels for CPython
# 3.10+ only (its last 3.9 wheels are 0.2's), so it is installed from 3.10 on, as a wheel, never
# built from source; on 3.9 conftest.py skips the rloop runs with that reason.
TEST_DEPS := 'maturin>=1.7,<2' 'pytest>=8' 'pytest-timeout>=2.3' 'uvloop>=0.19'
RLOOP_REQ := rloop>=0.5,<0.6
# $(call install_test_deps,VENV_DIR)
install_test_deps = $(1)/bin/pip install -q --disable-pip-version-check --only-binary=rloop $(TEST_DEPS) \
	$$($(1)/bin/python -c 'import sys; print("$(RLOOP_REQ)" if sys.version_info >= (3, 10) else "")')

$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(call install_test_deps,$(VENV))
	touch $@

venv: $(VENV)/.installed

demo: venv
	cargo run --quiet --example tour

lint: venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps -p pyo3-async-bridge --features attributes,testing,async-std-runtime

# Every feature at once (the default, tokio only, is what python-tests builds and pytest runs):
# one build of the crate serves the Rust suites, the async-std suite and every doc example.
ALL_FEATURES := async-std-runtime,attributes,testing

test-rust: venv
	cargo test -p pyo3-async-bridge --features $(ALL_FEATURES)

# The async-std runtime (SPEC R8) without tokio: the library's unit tests and the async-std
# suite (with tokio beside it, test-rust runs them).
test-async-std: venv
	cargo test -p pyo3-async-bridge --no-default-features --features async-std-runtime,attributes,testing --lib --test async_std

# The attributes and the test harness (SPEC T1-T4): the macros' parsing, the harness's command
# line, the doc examples, and the rename fixture (fixtures/renamed: the bridge under the name
# pyo3-async-runtimes) under cargo's harness, its harness = false binaries, and cargo nextest
# when it is installed.
test-attributes: venv
	cargo test -p pyo3-async-bridge-macros
	cargo test -p pyo3-async-bridge-fixture-renamed
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run -p pyo3-async-bridge-fixture-renamed; \
	else echo "cargo-nextest is not installed: the fixture's nextest run is skipped (cargo install cargo-nextest)"; fi

# The crossing state machine against a reference model, plus the proof that each deliberately
# broken variant is caught (10,000 cases each; BRIDGE_PROPTEST_CASES raises it).
test-props:
	cargo test -p pyo3-async-bridge-proptests

# PyO3 aborts when a Python reference is dropped off-thread under this cfg: proves the bridge
# sends every reference home to its loop thread. The library's unit tests and every integration
# test; not the doc examples, which are user code (they drop a result's `Py` where they like,
# as the default reference pool allows) and run in test-rust.
test-nopool: venv
	RUSTFLAGS="--cfg pyo3_disable_reference_pool" cargo test -p pyo3-async-bridge --target-dir target/nopool --features $(ALL_FEATURES) --lib --tests

build-ext: venv
	cd python-tests && ../$(VENV)/bin/maturin develop --quiet

# The exit and lifecycle subprocess scenarios (test_exit.py, test_lifecycle.py) are repeated a
# number of times each: make test runs two thirds of that in its first pass and a third in each
# repeat pass (BRIDGE_EXIT_RUNS_SCALE), make test-all-pythons all of it on every CPython.
FIRST_PASS := BRIDGE_EXIT_RUNS_SCALE=0.67
REPEAT_PASS := BRIDGE_EXIT_RUNS_SCALE=0.34

test-python: build-ext
	cd python-tests && $(FIRST_PASS) ../$(PYTEST) $(PYTEST_ARGS)

# The same suite with the call_soon_threadsafe wakeup forced, under asyncio and uvloop: that
# wakeup is what every loop has, and the first pass runs rloop (conftest.py, BRIDGE_TEST_RLOOP).
test-python-threadsafe: build-ext
	cd python-tests && PYO3_ASYNC_BRIDGE_WAKEUP=threadsafe $(REPEAT_PASS) BRIDGE_TEST_RLOOP=none ../$(PYTEST) $(PYTEST_ARGS)

# The same suite on one CPython (3.9 ... 3.13), in its own venv and target directory.
.PRECIOUS: .venv-3.%/.installed
.venv-3.%/.installed: Makefile
	@test -n "$(PYTHON_3.$*)" || { echo "CPython 3.$* not found (set PYTHON_3.$*=...)"; exit 1; }
	$(PYTHON_3.$*) -m venv .venv-3.$*
	$(call install_test_deps,.venv-3.$*)
	touch $@

test-python-3.%: .venv-3.%/.installed
	cd python-tests && VIRTUAL_ENV=$(abspath .venv-3.$*) PYO3_PYTHON=$(abspath .venv-3.$*)/bin/python \
		CARGO_TARGET_DIR=$(abspath target/py3$*) ../.venv-3.$*/bin/maturin develop --quiet
	cd python-tests && $(PYTEST_ENV) ../.venv-3.$*/bin/pytest $(PYTEST_ARGS)

# make test runs the oldest (a repeat pass); test-all-pythons every one in full, one after the
# other (each builds the extension once, then runs the suite under asyncio, uvloop and rloop).
test-python-oldest: PYTEST_ENV := $(REPEAT_PASS)
test-python-oldest: test-python-3.9

test-all-pythons: $(addprefix test-python-,$(ALL_PYTHONS))
	@echo "make test-all-pythons: the pytest suite passed on CPython $(ALL_PYTHONS)"

test: lint test-rust test-async-std test-attributes test-props test-nopool test-python test-python-threadsafe test-python-oldest
	@echo "make test: all suites passed"

# Release build of the benchmark extension, then every scenario interleaved across
# implementations; the tables go into BENCHMARKS.md. `python benches/run.py --help` for options.
bench: venv
	cd benches/pyext && ../../$(VENV)/bin/maturin develop --release --quiet
	$(VPY) benches/run.py --write
