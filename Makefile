# proxylog — `make run` and `make test` are the two commands a fresh machine needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080
UPSTREAM_PORT ?= 3000
DEB_PACKAGES ?= puma ruby-rack rsyslog rsyslog-openssl curl redis-server nginx-light wrk systemd logrotate
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The first interpreter >= 3.12 found: $(PYTHON), python3, python3.13/3.12, then pyenv's.
find_python = for p in $(PYTHON) python3 python3.13 python3.12 \
	  $$(ls -d $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -rV); do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
	  && { command -v $$p; exit 0; }; done; \
	  echo "no Python >= 3.12 found: install one or set PYTHON=/path/to/python3.12" >&2; exit 1

.PHONY: run test deps venv lint bench clean constraints

$(VENV)/.installed: pyproject.toml constraints.txt
	@py=$$($(find_python)) && echo "using $$py ($$($$py --version))" && \
	  ( [ -x $(PY) ] || $$py -m venv $(VENV) )
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the tests run for real; installed only when missing.
deps:
	@missing=""; for pkg in $(DEB_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q $$missing || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; }; \
	fi

test: deps venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check proxylog addons tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Demo: the demo shop (demo/config.ru) on real Puma (:$(UPSTREAM_PORT)) and proxylog in front (:$(PORT)).
run: deps venv
	@puma -q -b tcp://127.0.0.1:$(UPSTREAM_PORT) -t 2:8 demo/config.ru & puma=$$!; \
	trap 'kill $$puma 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/proxylog serve --config configs/proxylog.yaml \
	  --upstream http://127.0.0.1:$(UPSTREAM_PORT) --listen 127.0.0.1:$(PORT)

bench: deps venv
	$(PY) benchmarks/e2e.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Re-pin constraints.txt to what the venv has now (after a deliberate upgrade, then make test lint).
constraints: venv
	@{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^proxylog'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
