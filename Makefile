# Set-up is idempotent: the first `make demo` or `make test` creates .venv and installs pipa.
# These machines have no GPU: the CPU torch wheel is pinned so that pip pulls no CUDA packages.
# GPU users: see README ("Installing with your own CUDA torch").
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pipa-installed

.PHONY: demo test test-all quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pipa demo

quick: $(STAMP)
	$(VENV)/bin/pipa demo --quick --out runs/demo-quick

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
