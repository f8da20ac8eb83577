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
# The oldest CPython the project supports: the pytest suite runs on it too (its asyncio and its
# finalization differ). Found through pyenv or PATH; a missing one fails `make test`.
PYTHON_OLDEST ?= $(shell for p in $$(pyenv prefix 3.9 2>/dev/null)/bin/python3.9 $$(command -v python3.9); do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null && echo "$$p" && break; done)
VENV_OLDEST := .venv-oldest

.PHONY: help demo test lint test-rust test-attributes test-props test-nopool test-python test-python-threadsafe test-python-oldest build-ext venv bench

help:
	@echo "make demo   - a runnable tour of the bridge (asserts every step)"
	@echo "make test   - every suite: fmt, clippy, cargo tests (also the attributes and the rename fixture, and without PyO3's reference pool), proptests, pytest also on CPython 3.9, pytest under asyncio and uvloop, both wakeup modes"
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
	RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps -p pyo3-async-bridge --features attributes,testing

test-rust: venv
	cargo test -p pyo3-async-bridge

# The attributes and the test harness (SPEC T1-T4): the macros' parsing, the harness's command
# line, the doc examples, and the rename fixture (fixtures/renamed: the bridge under the name
# pyo3-async-runtimes) under cargo's harness, its harness = false binaries, and cargo nextest
# when it is installed.
test-attributes: venv
	cargo test -p pyo3-async-bridge-macros
	cargo test -p pyo3-async-bridge --features attributes,testing --lib testing
	cargo test -p pyo3-async-bridge --features attributes,testing --doc -- tokio::main tokio::test testing
	cargo test -p pyo3-async-bridge-fixture-renamed
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run -p pyo3-async-bridge-fixture-renamed; \
	else echo "cargo-nextest is not installed: the fixture's nextest run is skipped (cargo install cargo-nextest)"; fi

# The crossing state machine against a reference model, plus the proof that each deliberately
# broken variant is caught (10,000 cases each; BRIDGE_PROPTEST_CASES raises it).
test-props:
	cargo test -p pyo3-async-bridge-proptests

# PyO3 aborts when a Python reference is dropped off-thread under this cfg: proves the bridge
# sends every reference home to its loop thread.
test-nopool: venv
	RUSTFLAGS="--cfg pyo3_disable_reference_pool" cargo test -p pyo3-async-bridge --target-dir target/nopool

build-ext: venv
	cd python-tests && ../$(VENV)/bin/maturin develop --quiet

test-python: build-ext
	cd python-tests && ../$(PYTEST) $(PYTEST_ARGS)

# The same suite with the call_soon_threadsafe wakeup forced.
test-python-threadsafe: build-ext
	cd python-tests && PYO3_ASYNC_BRIDGE_WAKEUP=threadsafe ../$(PYTEST) $(PYTEST_ARGS)

# The same suite on the oldest supported CPython, in its own venv and target directory.
$(VENV_OLDEST)/.installed: Makefile
	@test -n "$(PYTHON_OLDEST)" || { echo "CPython 3.9 not found (set PYTHON_OLDEST)"; exit 1; }
	$(PYTHON_OLDEST) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q --disable-pip-version-check 'maturin>=1.7,<2' 'pytest>=8' 'pytest-timeout>=2.3' 'uvloop>=0.19'
	touch $@

test-python-oldest: $(VENV_OLDEST)/.installed
	cd python-tests && VIRTUAL_ENV=$(abspath $(VENV_OLDEST)) PYO3_PYTHON=$(abspath $(VENV_OLDEST))/bin/python \
		CARGO_TARGET_DIR=$(abspath target/oldest) ../$(VENV_OLDEST)/bin/maturin develop --quiet
	cd python-tests && ../$(VENV_OLDEST)/bin/pytest $(PYTEST_ARGS)

test: lint test-rust test-attributes test-props test-nopool test-python test-python-threadsafe test-python-oldest
	@echo "make test: all suites passed"

# Release build of the benchmark extension, then every scenario interleaved across
# implementations; the tables go into BENCHMARKS.md. `python benches/run.py --help` for options.
bench: venv
	cd benches/pyext && ../../$(VENV)/bin/maturin develop --release --quiet
	$(VPY) benches/run.py --write
