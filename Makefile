# pimail — the two commands the README promises, plus the rest of the developer loop.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./var
LISTEN ?=

.PHONY: run test lint typecheck pytest bench bench-quick faults powercut deb deb-test image image-test clean venv venv-test

$(BIN)/pimail: pyproject.toml
	scripts/ensure-deps run
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-installed: pyproject.toml
	scripts/ensure-deps test
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,systemd]'
	@touch $@

venv: $(BIN)/pimail
venv-test: $(VENV)/.test-installed

## make run: set up .venv and start a node with $(DATA_DIR)/pimail.toml if it exists (`pimail init`
## writes one), else the built-in defaults (SQLite in ./var, RLPx on 0.0.0.0:30303, the status page on
## 0.0.0.0:8080); `make run LISTEN=HOST:PORT` overrides the file's [node] listen
run: $(BIN)/pimail
	$(BIN)/pimail run --data-dir $(DATA_DIR) $(if $(LISTEN),--listen $(LISTEN))

## make test: ruff, mypy --strict on pimail/, then the whole pytest suite
## (with a throwaway PostgreSQL from scripts/start-test-postgres for the fleet-backend tests, on
## 127.0.0.1; it stays running for the next run: `scripts/start-test-postgres --stop` stops it)
test: venv-test
	$(BIN)/ruff check pimail tests bench
	$(BIN)/mypy --strict pimail
	eval "$$(scripts/start-test-postgres)"; export PIMAIL_TEST_PG_URL; $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv-test
	$(BIN)/ruff check pimail tests bench

typecheck: venv-test
	$(BIN)/mypy --strict pimail

bench: venv-test
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: venv-test
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

faults: venv-test
	$(BIN)/python -m bench.faults $(FAULT_ARGS)

## make powercut: the power-cut fault (root, QEMU; ~1 h): 30 cuts with the default config, 8 with
## synchronous = "normal" as the control (bench/powercut/run.py)
powercut: venv-test
	scripts/ensure-deps powercut
	$(BIN)/python -m bench.faults --only powercut $(FAULT_ARGS)

## make deb: dist/pimail_<version>_<arch>.deb (Debian 12) and pimail_<version>+deb13_<arch>.deb
## (Debian 13) for amd64 and arm64 (packaging/deb/build.sh)
DEB_ARCHES ?= amd64 arm64
DEB_SUITES ?= bookworm trixie
deb:
	scripts/ensure-deps deb
	for suite in $(DEB_SUITES); do for arch in $(DEB_ARCHES); do \
		PIMAIL_DEB_SUITE=$$suite packaging/deb/build.sh $$arch || exit 1; done; done

## make deb-test: install the packages into fresh Debian 12 and 13 roots (arm64 under qemu-user); root
deb-test:
	scripts/ensure-deps deb
	PIMAIL_DEB_SUITES="$(DEB_SUITES)" packaging/deb/test.sh $(DEB_ARCHES)

# the image installs pimail from the arm64 .deb, which its build makes first
image:
	image/build.sh $(IMAGE_ARGS)

# the boot test's host side dials the guest with pimail's own RLPx transport and decodes the login
# prompt's QR code (zxing-cpp, a test extra); QEMU and the disk tools come from ensure-deps
image-test: venv-test
	scripts/ensure-deps image-test
	image/test/boot-smoke.sh $(IMAGE_TEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
