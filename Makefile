# Everything a newcomer needs: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint tools bench dashboards lock clean

# The test environment exactly as locked (requirements-test.lock, every file pinned by its SHA-256: what CI
# installs on a fresh machine is what was tested), then the exporter and the simulator (its own distribution,
# simulator/pyproject.toml) editable, without resolving anything past the lock; pip check proves the lock
# satisfies both. python-gssapi and krb5 build against MIT Kerberos: its headers first (tools build).
$(STAMP): pyproject.toml simulator/pyproject.toml requirements-test.lock
	scripts/install-tools.sh build
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-test.lock
	$(BIN)/pip install --quiet --no-deps --editable . --editable ./simulator
	$(BIN)/pip check
	touch $@

## demo: set up, then run the Exchange simulator and the exporter probing it
demo: $(STAMP)
	$(BIN)/bems-simulator demo

## tools: the external programs the tests use (promtool, Prometheus, Alertmanager and amtool, chromium, an MIT
## Kerberos KDC and faketime, from Debian)
tools:
	scripts/install-tools.sh

## lint: ruff over the code and the tests, then the architecture contracts (pyproject.toml [tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

## test: set up, lint, then the whole test suite (what .ci/run calls)
test: $(STAMP) tools lint
	$(BIN)/pytest

## bench: the benchmark (prints figures; asserts nothing timed)
bench: $(STAMP)
	$(BIN)/python -m bench

## dashboards: regenerate the Grafana dashboards (grafana/dashboards/*.json) from grafana/dashboards.py
dashboards: $(STAMP)
	$(BIN)/python -m grafana.build

## lock: regenerate the hashed locks after changing a pyproject.toml: requirements.lock (the image's runtime
## dependencies), simulator/requirements.lock (the demo image's) and requirements-test.lock (make test and CI:
## the test extra and the simulator), both within the first. pip-compile keeps every pin it can; to move them
## all to the newest releases, run `make lock LOCK_FLAGS=--upgrade`.
LOCK_VENV  := .venv-lock
PIP_COMPILE = $(CURDIR)/$(LOCK_VENV)/bin/pip-compile --allow-unsafe --generate-hashes --no-emit-find-links \
              --no-emit-index-url --pip-args='--isolated' --strip-extras $(LOCK_FLAGS)
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) \
	  && $(LOCK_VENV)/bin/pip install --quiet 'pip-tools>=7.4,<8'; }
	$(PIP_COMPILE) --output-file=requirements.lock pyproject.toml
	cd simulator && $(PIP_COMPILE) --constraint ../requirements.lock --output-file=requirements.lock pyproject.toml
	$(PIP_COMPILE) --constraint requirements.lock --extra test --output-file=requirements-test.lock \
	  pyproject.toml simulator/pyproject.toml

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .ruff_cache *.egg-info simulator/*.egg-info .demo
