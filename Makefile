# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

# Creates the virtualenv if missing and installs the project with its test extra; redone when
# pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --progress-bar off -e '.[test]'
	touch $(STAMP)

# --retrain-changed: a demo run by an earlier rayexp (other shards or protocol) is retrained, its old runs kept
# in MLflow marked superseded, instead of stopping the demo.
demo: $(STAMP)
	$(PY) datasets/prepare.py digits
	$(PY) sweeps/demo.py --retrain-changed

test: $(STAMP)
	$(PY) -m pytest

# ruff's lint and format checks, with pyproject.toml's configuration (line length 120); `ruff format .` fixes the
# formatting.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf ray_results reports mlflow.db mlartifacts datasets/digits
