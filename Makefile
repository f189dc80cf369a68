# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install bench clean

# torch is pinned first: 2.13.0 is the CPU build; any other version pulls gigabytes of CUDA packages.
# scripts/heartbeat.py says a quiet step is still running every 10 s (a fresh install takes minutes).
HEARTBEAT := $(PYTHON) scripts/heartbeat.py
$(VENV)/.installed: pyproject.toml
	$(HEARTBEAT) "creating $(VENV)" -- $(PYTHON) -m venv $(VENV)
	$(HEARTBEAT) "upgrading pip" -- $(BIN)/python -m pip install --quiet --upgrade pip
	$(HEARTBEAT) "installing torch 2.13.0 (CPU)" -- $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(HEARTBEAT) "installing deployc and its dependencies" -- $(BIN)/python -m pip install --quiet -e ".[dev,tflite]" "torch==2.13.0"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/deployc demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(HEARTBEAT) "running the test suite (a dot per test)" -- $(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/resnet18_cpu.py

clean:
	rm -rf $(VENV) deployc-out deployc-demo .pytest_cache
