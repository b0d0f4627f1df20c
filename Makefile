# Everyday commands. Each one uses the project's virtual environment, created on first use by scripts/stack.sh:
# $(VENV) below, i.e. $MNIST_VENV, else the active one ($VIRTUAL_ENV), else .venv.
#
#   make up        the same four services in containers, on any host: with the GPU where Docker has the NVIDIA
#                  runtime, on the CPU where it has not (scripts/compose.sh); make down stops them
#   make stack     trainer + gRPC inference + web page + TensorBoard as local processes (Ctrl-C stops them all)
#                  e.g. MNIST_TENSORBOARD_PORT=6007 make stack, make stack ARGS="--epochs 1 --skip trainer"
#   make test      the test suite, in two processes (PYTEST_ARGS="tests/deploy -q" for a part, TEST_WORKERS=0
#                  for one process)
#   make protos    regenerate the gRPC code in shared/api from protos/
#   make lock      rewrite constraints.txt, the exact versions every install uses, from pyproject.toml's ranges
#   make lint      ruff (lint and format check) and mypy on the code; hadolint on both Dockerfiles; the compose
#                  files through `docker compose config`
#   make tools     checkov, for tests/deploy/test_k8s.py, in a virtual environment of its own
#   make help      this list (also what a plain `make` prints)

VENV ?= $(or $(MNIST_VENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=
export MNIST_VENV := $(VENV)

# checkov pins older releases of packages the project uses (packaging, networkx, python-dateutil), so it lives in
# a virtual environment of its own, reused across runs; tests/deploy/test_k8s.py finds it there (or $MNIST_CHECKOV).
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV ?= $(HOME)/.cache/mnist-stack/tools/checkov

.PHONY: help up down stack venv test protos lock lint tools

# The first target is what a plain `make` runs: the list above, not a stack of containers.
help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

up:
	scripts/compose.sh up $(ARGS)

down:
	scripts/compose.sh down $(ARGS)

stack:
	scripts/stack.sh $(ARGS)

# Dev tools (pytest, hadolint, grpcio-tools, ...) too: the targets below need them.
venv:
	MNIST_STACK_EXTRAS=dev scripts/stack.sh --setup-only

# The suite runs in TEST_WORKERS processes (pytest-xdist), each given whole files at a time (--dist loadfile: a
# file's servers, browser and models are started once, in one process). 2 suits the 2-core machines the suite is
# sized for (10 minutes warm against 14 in one process); TEST_WORKERS=0 runs it in this process (pdb, -s).
TEST_WORKERS ?= 2

test: venv tools
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

tools: venv
	@# Anything else at that path (a half-made environment, a file, a link to one since deleted) is removed
	@# first: `venv --clear` stops with "File exists" on a dangling link.
	@if ! $(CHECKOV_VENV)/bin/checkov --version 2>/dev/null | grep -qx "$(CHECKOV_VERSION)"; then \
		rm -rf $(CHECKOV_VENV) && $(PY) -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install -q "checkov==$(CHECKOV_VERSION)"; \
	fi

protos: venv
	$(PY) scripts/gen_protos.py

lock: venv
	$(PY) scripts/lock.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint trainer/Dockerfile inference/Dockerfile
	@# Compose v2.24 or newer: the CPU override removes the GPU request with `!reset`.
	docker compose -f docker-compose.yml config -q
	docker compose -f docker-compose.yml -f docker-compose.cpu.yml config -q
