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

# Debian packages the tests (curl as an agent) and benchmarks (hey) use.
SYSTEM_TOOLS := curl hey
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "please install: $$missing (Debian/Ubuntu packages)" >&2; exit 1; fi; \
	fi

clean:
	rm -rf $(VENV) var .pytest_cache
