# securechat: one command to try it, one to test it.
#
#   make run     .venv + install + dev certificates + tokens, then the server with two
#                bots, alice and bob, talking over TLS; Ctrl-C stops everything
#   make demo    the same, but it stops by itself once alice and bob are done
#   make test    .venv + install, then ruff, mypy and every test (the Docker ones too:
#                they skip, saying why, where no Docker engine can run)
#   make bench   the benchmark (ARGS="..." passes options to bench/run_bench.py)
#   make clean   build leftovers and caches; `make distclean` also .venv, run/, certs
#
# Variables: PY (python3), PORT (7443), HOST (127.0.0.1), DEMO_COUNT (5),
# DEMO_EVERY (1 s), RUN_DIR (run), VENV (.venv).

PY ?= python3
VENV ?= .venv
RUN_DIR ?= run
HOST ?= 127.0.0.1
PORT ?= 7443
DEMO_COUNT ?= 5
DEMO_EVERY ?= 1
ARGS ?=
PYTEST_ARGS ?= --durations=10

BIN := $(VENV)/bin
# Reinstalled when pyproject.toml changes (new dependency, new console script).
STAMP := $(VENV)/.installed-dev

.PHONY: run demo test lint typecheck bench secrets clean distclean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "securechat needs Python 3.11+, $(PY) is " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# Certificates into certs/ and tokens for alice, bob and carol into $(RUN_DIR)/, each
# only if missing: the same script the compose "init" service runs.
secrets: $(STAMP)
	@PATH="$(abspath $(BIN)):$$PATH" SECURECHAT_CERTS_DIR=certs \
	  SECURECHAT_TOKENS=$(RUN_DIR)/tokens.json SECURECHAT_CLIENT_DIR=$(RUN_DIR) \
	  sh docker/init.sh

run: secrets
	@BIN=$(BIN) RUN_DIR=$(RUN_DIR) HOST=$(HOST) PORT=$(PORT) DEMO_COUNT=$(DEMO_COUNT) \
	  DEMO_EVERY=$(DEMO_EVERY) KEEP_SERVING=1 bash scripts/run-demo.sh

demo: secrets
	@BIN=$(BIN) RUN_DIR=$(RUN_DIR) HOST=$(HOST) PORT=$(PORT) DEMO_COUNT=$(DEMO_COUNT) \
	  DEMO_EVERY=$(DEMO_EVERY) KEEP_SERVING=0 bash scripts/run-demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache docker/wheels
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

# Also what `make run` made: the venv, tokens, and the development CA and keys.
distclean: clean
	rm -rf $(VENV) $(RUN_DIR)
	rm -f certs/ca.pem certs/ca.key certs/server.pem certs/server.key
