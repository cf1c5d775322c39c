# Two commands a newcomer runs: `make demo` and `make test`. Each builds .venv when needed.
# TORCH is the torch requirement installed first: the CPU build by default (fast, no CUDA
# download); a GPU user runs e.g. `make venv TORCH=torch` to take PyPI's CUDA build instead.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: venv demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/gwray demo

test: venv
	$(BIN)/python -m pytest -q --durations=15

bench: venv
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
