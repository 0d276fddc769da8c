# danlu: `make demo` runs the default recipe end to end; `make test` runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: the CPU wheel on local disk satisfies it, and pip then
# has nothing to fetch for the project's `torch>=2.5,<2.14` requirement.
TORCH ?= torch==2.13.0

.PHONY: demo test test-all bench lint format clean browser screenshot

# Two install stamps in the one .venv: the demo installs the base package only, the tests, benchmarks
# and lint install the dev extras (the reference libraries); either one creates .venv.
$(VENV)/.demo: EXTRAS :=
$(VENV)/.dev: EXTRAS := [dev]
$(VENV)/.demo $(VENV)/.dev: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.$(EXTRAS)'
	touch $@

demo: $(VENV)/.demo
	$(BIN)/danlu run recipes/tiny-cpu.yaml

test: $(VENV)/.dev
	$(BIN)/pytest

test-all: $(VENV)/.dev
	$(BIN)/pytest -m ''

# The chat page's browser test (tests/test_serve_page.py) drives Debian's chromium through its
# chromedriver with selenium; no browser is downloaded. Needs root (CI runs as root) or run it with sudo.
browser:
	test -x /usr/bin/chromedriver -a -x /usr/bin/chromium || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# docs/chat-page.png, the README's picture of the chat page, on SmolLM2 (danlu import smollm2-135m-instruct)
SCREENSHOT_MODEL ?= runs/smollm2
screenshot: $(VENV)/.dev browser
	$(BIN)/python tools/chat_page_screenshot.py $(SCREENSHOT_MODEL) docs/chat-page.png

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/peak_flops.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/tokenizer.py

# Every check runs and reports, then lint fails if any failed: ruff, the import-layer contracts of
# pyproject's [tool.importlinter], and no import cycle between modules of src/danlu.
lint: $(VENV)/.dev
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/lint-imports || status=1; \
	$(BIN)/python tools/import_cycles.py danlu || status=1; \
	exit $$status

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache
