# agproxy: build, run, test, lint. `make run` and `make test` are the two set-up commands.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PORT ?= 8045
STDLIB_ONLY ?= ../shared/tools/stdlib-only
PYTEST_ARGS ?=

.PHONY: build run test lint check-py39 clean

build: agproxy.pyz

agproxy.pyz: agproxy.py zipapp.spec tools/build_pyz.py
	$(PYTHON) tools/build_pyz.py zipapp.spec agproxy.pyz

run: build
	$(PYTHON) agproxy.pyz --port $(PORT)

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

test: $(VENV)/.installed build
	$(VPY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check agproxy.py tests tools
	$(VPY) $(STDLIB_ONLY) agproxy.py
	$(VENV)/bin/vermin --target=3.9- --no-tips --violations agproxy.py

clean:
	rm -rf $(VENV) agproxy.pyz .pytest_cache .ruff_cache .hypothesis
