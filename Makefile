# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing
# and (re)install requirements.txt when it changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
RUN_DIR ?= runs/tiny

PORT ?= 8501

.PHONY: demo test pipeline status dashboard clean-venv

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Build (or resume, or skip) the tiny run, print its status, then serve the dashboard on it.
demo: $(STAMP)
	$(PY) -m pipelines run --preset tiny --run-dir $(RUN_DIR)
	$(PY) -m pipelines status $(RUN_DIR)
	FEATURE_STORE=$(RUN_DIR)/store $(PY) -m streamlit run dashboard/app.py --server.port $(PORT) \
		--browser.gatherUsageStats false

dashboard: $(STAMP)
	FEATURE_STORE=$(RUN_DIR)/store $(PY) -m streamlit run dashboard/app.py --server.port $(PORT) \
		--browser.gatherUsageStats false

pipeline: $(STAMP)
	$(PY) -m pipelines run --preset tiny --run-dir $(RUN_DIR)

status: $(STAMP)
	$(PY) -m pipelines status $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
