# Two commands do all set-up on a fresh machine:
#   make train   installs the requirements into .venv and trains the default experiment on the default data
#   make test    installs the requirements (and pytest, ruff) into .venv and runs ruff and the test suite
#   make lint    ruff alone
#   make image   builds the Dockerfile's image (one cell folder per run: docs/containers.md)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

IMAGE ?= cs230-template
RUNTIME ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
BUILD_OPTS ?=

.PHONY: train test lint image

$(BIN)/.core: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(BIN)/.dev: $(BIN)/.core $(wildcard requirements-*.txt)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

train: $(BIN)/.core
	$(BIN)/python train.py --model_dir experiments/base_model

test: lint
	$(BIN)/python -m pytest -q

lint: $(BIN)/.dev
	$(BIN)/python -m ruff check .

# the commit is a label, so `podman image inspect` traces an image back to its code
image:
	$(RUNTIME) build -t $(IMAGE) --label org.opencontainers.image.revision=$$(git rev-parse HEAD 2>/dev/null) \
		$(BUILD_OPTS) .
