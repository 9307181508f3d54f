# Two commands do all set-up on a fresh machine:
#   make train   installs the requirements into .venv and trains the default experiment on the default data
#   make test    installs the requirements (and pytest, ruff) into .venv and runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test lint

$(BIN)/.core: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(BIN)/.dev: $(BIN)/.core requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

train: $(BIN)/.core
	$(BIN)/python train.py --model_dir experiments/base_model

test: $(BIN)/.dev
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q
