# The two commands of the README: `make pipeline` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: pipeline test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

pipeline: $(STAMP)
	. $(VENV)/bin/activate && dvc repro

test: $(STAMP)
	. $(VENV)/bin/activate && pytest
