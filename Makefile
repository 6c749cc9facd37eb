# One command per chore; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_RECORD := .stack/run/test-started-$(shell date +%s)-$$$$

.DEFAULT_GOAL := help
.PHONY: help install dev stack-up stack-down stack-status test coverage test-unit test-smoke test-fast lint format token bench bench-history clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

install: $(STAMP) ## install Python packages, Debian packages and the Java servers
	$(PY) -m devstack install

dev: install ## run the whole service locally in the foreground (Ctrl-C stops it)
	$(PY) -m devstack dev

stack-up: install ## start Redis, the MongoDB-protocol server and Kafka
	$(PY) -m devstack up

stack-down: ## stop the servers
	$(PY) -m devstack down

stack-status: ## say which servers answer
	$(PY) -m devstack status

# Closed loopback ports: a unit test that reaches a server fails rather than passing by luck.
UNIT_ENV := DEVSTACK_REDIS_PORT=1 DEVSTACK_KAFKA_PORT=2 DEVSTACK_MONGO_PORT=3

# The servers start while the unit tests run (those use closed ports, and one core each).
# `make test` measures no coverage: tracing every line of the worker, bridge and API
# processes the tests start costs about 90 s of the 2-core run; `make coverage` does.
define RUN_TESTS
	@mkdir -p .stack/run; record=$(RUN_RECORD); \
	$(PY) -m devstack up --record $$record > $$record.log 2>&1 & up=$$!; \
	echo "$(UNIT_ENV) $(PY) -m pytest tests/unit $(1) $(PYTEST_ARGS)"; \
	$(UNIT_ENV) $(PY) -m pytest tests/unit $(1) $(PYTEST_ARGS); unit=$$?; \
	wait $$up; started=$$?; cat $$record.log; rm -f $$record.log; \
	if [ $$unit -ne 0 ] || [ $$started -ne 0 ]; then $(PY) -m devstack down --record $$record; exit 1; fi; \
	echo "$(PY) -m pytest -n 2 --dist loadgroup --ignore=tests/unit $(2) $(PYTEST_ARGS)"; \
	$(PY) -m pytest -n 2 --dist loadgroup --ignore=tests/unit $(2) $(PYTEST_ARGS); rc=$$?; \
	$(PY) -m devstack down --record $$record; exit $$rc
endef

test: install ## every test: the unit tests first (no server) while the servers that are not running start, then the integration tests; stop what it started
	$(call RUN_TESTS,,)

coverage: install ## `make test` measuring line and branch coverage, in the worker, bridge and API processes too (about 1.5 min longer)
	$(call RUN_TESTS,--cov --cov-report=,--cov --cov-append --cov-report=term:skip-covered)

test-unit: $(STAMP) ## the unit tests (tests/unit), with no server at all
	$(UNIT_ENV) $(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-smoke: $(STAMP) ## the worker image on pytest-celery's containers (skips without a Docker engine)
	$(PY) -m pytest tests/smoke $(PYTEST_ARGS)

test-fast: ## the tests not marked slow, against running servers
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy web workers shared devstack bench celeryconfig.py

format: $(STAMP) ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

token: $(STAMP) ## print a signed development token (ARGS="--type admin")
	@$(PY) -m devstack token $(ARGS)

bench: install ## round trips, step breakdown, issue 10's goals, scaling, memory (ARGS="--quick")
	$(PY) -m devstack up
	$(PY) -m bench $(ARGS)

bench-history: install ## charge, refund and GET /get on cards with 0, 10,000 and 100,000 earlier payments (ARGS="--ops 60")
	$(PY) -m devstack up
	$(PY) -m bench.history $(ARGS)

clean: stack-down ## stop the servers and delete their data
	rm -rf .stack
