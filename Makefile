# `make demo` and `make test` each set up everything they need on a fresh Debian machine:
# the system packages (espeak-ng speaks the synthetic corpus, fortunes-* hold its sentences),
# a virtual environment in .venv, and the package with its pinned dependencies.
PYTHON ?= python3
VENV := .venv
SYSTEM_PACKAGES := espeak-ng fortunes fortunes-es fortunes-de fortunes-it
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test setup system-packages

demo: setup
	$(VENV)/bin/wavadapt demo

test: setup
	$(VENV)/bin/ruff check wavadapt tests benchmarks
	$(VENV)/bin/pytest -q

setup: system-packages $(VENV)/.installed

system-packages:
	@if ! command -v espeak-ng >/dev/null || [ ! -d /usr/share/games/fortunes/es ] \
	    || [ ! -d /usr/share/games/fortunes/de ] || [ ! -d /usr/share/games/fortunes/it ]; then \
	  echo "Installing system packages: $(SYSTEM_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull the multi-GB CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@
