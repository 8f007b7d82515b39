# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing
# and (re)install requirements.txt when it changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
RUN_DIR ?= runs/tiny

.PHONY: demo test pipeline status clean-venv

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines run --preset tiny --run-dir $(RUN_DIR)
	$(PY) -m pipelines status $(RUN_DIR)

pipeline: $(STAMP)
	$(PY) -m pipelines run --preset tiny --run-dir $(RUN_DIR)

status: $(STAMP)
	$(PY) -m pipelines status $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
