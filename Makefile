# Two commands: `make demo` and `make test`; both set up first.
# Set-up: Debian renderer libraries (EGL/OSMesa for offscreen MuJoCo), a .venv with pinned packages,
# the project in editable mode. Idempotent: a second run checks a stamp and takes seconds.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
APT_PACKAGES := libegl1 libgl1 libosmesa6 libgles2

.PHONY: setup system-deps test test-fast mutation demo lint clean

setup: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing renderer libraries:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -n 2 -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

# Planted bugs in a temporary copy, each against the tests that guard its module (not in CI: ~30 min on 2 cores);
# the table lands in docs/benchmarks.md.
mutation: setup
	nice -n 5 $(BIN)/python scripts/mutation.py --update-docs

lint: setup
	$(BIN)/ruff check .

demo: setup
	$(BIN)/vla demo

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
