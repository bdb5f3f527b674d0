# Everything a fresh machine needs goes through these targets; CI runs `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
EG := $(VENV)/bin/egressguard
STAMP := $(VENV)/.installed

.PHONY: run test demo bench lint system-deps clean

run: $(STAMP)
	$(EG) run --local-vault

test: $(STAMP) system-deps
	$(PY) -m pytest -q

demo: $(STAMP)
	$(EG) demo

bench: $(STAMP) system-deps
	$(PY) bench/overhead.py

lint: $(STAMP)
	$(VENV)/bin/ruff check addons tests bench

$(STAMP): pyproject.toml
	@test -x $(PY) || "$$(scripts/find-python)" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# Debian packages used by tests and benchmarks (hey for bench/overhead).
system-deps:
	@command -v hey >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq hey; \
	  else echo "install 'hey' (Debian package) for bench/overhead" >&2; fi; }

clean:
	rm -rf $(VENV) var .pytest_cache
