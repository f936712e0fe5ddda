# Everything a newcomer needs: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint tools bench dashboards lock clean

# The exporter and the simulator (its own distribution, simulator/pyproject.toml), both editable.
$(STAMP): pyproject.toml simulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable '.[test]'
	$(BIN)/pip install --quiet --editable './simulator[demo]'
	touch $@

## demo: set up, then run the Exchange simulator and the exporter probing it
demo: $(STAMP)
	$(BIN)/bems-simulator demo

## tools: the external programs the tests use (promtool, Prometheus, Alertmanager and amtool, from Debian)
tools:
	scripts/install-tools.sh

## lint: ruff over the code and the tests
lint: $(STAMP)
	$(BIN)/ruff check .

## test: set up, lint, then the whole test suite (what .ci/run calls)
test: $(STAMP) tools lint
	$(BIN)/pytest

## bench: the benchmark (prints figures; asserts nothing timed)
bench: $(STAMP)
	$(BIN)/python -m bench

## dashboards: regenerate the Grafana dashboards (grafana/dashboards/*.json) from grafana/dashboards.py
dashboards: $(STAMP)
	$(BIN)/python -m grafana.build

## lock: regenerate requirements.lock (the image's hashed runtime dependencies) and simulator/requirements.lock
## (the demo image's, within the first) after changing a pyproject.toml
lock: $(STAMP)
	$(BIN)/pip install --quiet 'pip-tools>=7.4,<8'
	$(BIN)/pip-compile --allow-unsafe --generate-hashes --no-emit-find-links --no-emit-index-url \
	  --output-file=requirements.lock --pip-args='--isolated' --strip-extras pyproject.toml
	cd simulator && ../$(BIN)/pip-compile --allow-unsafe --generate-hashes --no-emit-find-links --no-emit-index-url \
	  --constraint ../requirements.lock --output-file=requirements.lock --pip-args='--isolated' --strip-extras \
	  pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info simulator/*.egg-info .demo
