# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing
# and (re)install requirements.txt when it changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
RUN_DIR ?= runs/tiny

PORT ?= 8501

.PHONY: demo test pipeline status dashboard bench clean-venv

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Build (or resume, or skip) the tiny run, print its status, then serve the dashboard on it.
demo: $(STAMP)
	$(PY) -m pipelines run --preset tiny --run-dir $(RUN_DIR)
	$(PY) -m pipelines status $(RUN_DIR)
	FEATURE_STORE=$(RUN_DIR)/store $(PY) -m dashboard.serve --server.port $(PORT) \
		--browser.gatherUsageStats false

dashboard: $(STAMP)
	FEATURE_STORE=$(RUN_DIR)/store $(PY) -m dashboard.serve --server.port $(PORT) \
		--browser.gatherUsageStats false

pipeline: $(STAMP)
	$(PY) -m pipelines run --preset tiny --run-dir $(RUN_DIR)

status: $(STAMP)
	$(PY) -m pipelines status $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

PEERS := benchmarks/peers/.venv
$(PEERS)/.installed: benchmarks/peers/requirements.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r benchmarks/peers/requirements.txt
	touch $@

# Every benchmark; writes benchmarks/results.md and benchmarks/results.json.
bench: $(STAMP) $(PEERS)/.installed
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
