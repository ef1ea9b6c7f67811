# The two commands of the README: `make demo` and `make test`. Each one creates or refreshes .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test check setup setup-test bench release clean

demo: setup
	$(BIN)/fvagent demo

test: check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lint, format and types before any test runs (configuration in pyproject.toml).
check: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

setup: $(VENV)/.installed-demo
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-demo: pyproject.toml deploy/system-deps.sh
	sh deploy/system-deps.sh demo
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml deploy/system-deps.sh
	sh deploy/system-deps.sh test
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo,test,journald]'
	touch $@ $(VENV)/.installed-demo

# Every benchmark, one after another (about 12 minutes; bench/install.py needs root); figures and machines in bench/README.md.
bench: setup-test
	$(BIN)/python bench/crypto.py
	$(BIN)/python bench/face.py
	$(BIN)/python bench/card_reader.py
	$(BIN)/python bench/verification.py 30
	$(BIN)/python bench/localapi.py 300
	$(BIN)/python bench/mock_platform.py --count 300
	$(BIN)/python bench/backlog.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/install.py
	$(BIN)/python bench/followup.py
	$(BIN)/python bench/hostile_reply.py
# bench/powercut.py needs root and FUSE: sudo .venv/bin/python bench/powercut.py --cuts 100

# The offline bundles dist/fvagent-VERSION-linux-{x86_64,aarch64}.tar.gz (docs/operations.md);
# downloads are kept in build/release/ between runs.
release: setup
	$(BIN)/python deploy/release.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
