# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency declarations change. constraints.txt pins torch==2.13.0 (CPU build).
# Every optional extra is installed, so the tests of LiteRT, AI Hub and the device farm run too.
$(STAMP): $(PY) setup.cfg pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,litert,aihub,cluster]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latbench demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# ruff, then the import-layer rule (tests/test_layers.py): no upward imports, no cycles.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py

clean:
	rm -rf $(VENV) build *.egg-info
