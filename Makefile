# agproxy: build, run, test, lint. `make run` and `make test` are the two set-up commands.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# make run PORT=8046 overrides the config's port (which is 8045 unless the config says otherwise).
PORT ?=
STDLIB_ONLY ?= tools/stdlib_only.py
# The suite runs its files across the cores (a file's tests stay together: the fault matrix shares one run);
# -rs lists every skipped test with its reason (the Claude Code tests say when no CLI is installed).
PYTEST_ARGS ?= -n auto --dist loadfile -rs
# The real Claude Code CLI for the end-to-end tests (dev-only, never committed; skipped without npm): the
# newest release, pinned by number (on node 20 a plain install resolves to an old one), and an older one,
# since users update slowly.
CLAUDE_CODE_VERSION ?= 2.1.332
CLAUDE_CODE_OLDER ?= 2.1.197
CLAUDE_DIR := .cache/claude-code
# The other agents' CLIs for the end-to-end tests of the routes they use (issue 21), pinned the same way:
# Codex CLI speaks the Responses API, Gemini CLI the Gemini API. About 525 MB together.
CODEX_VERSION ?= 0.171.0
GEMINI_CLI_VERSION ?= 0.61.0
# The two builds take about 620 MB. `make test SKIP_CLAUDE_CLI=1` downloads none of the four CLIs; their tests are
# then skipped (copies already in .cache are still used; delete that folder to free the space).
SKIP_CLAUDE_CLI ?=

.PHONY: build run test lint claude-cli bench bench-peers fuzz clean

build: agproxy.pyz

agproxy.pyz: agproxy.py zipapp.spec tools/build_pyz.py
	$(PYTHON) tools/build_pyz.py zipapp.spec agproxy.pyz

# make run CONFIG=my-config.json serves that config (else agproxy's own lookup: ./agproxy.json, ~/.config/...).
CONFIG ?=
run: build
	$(PYTHON) agproxy.pyz $(if $(PORT),--port $(PORT)) $(if $(CONFIG),--config $(CONFIG))

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

test: $(VENV)/.installed build claude-cli
	$(VPY) -m pytest $(PYTEST_ARGS)

claude-cli:
ifneq ($(SKIP_CLAUDE_CLI),)
	@echo "SKIP_CLAUDE_CLI is set: no Claude Code is downloaded; the CLI tests run only with a copy already in $(CLAUDE_DIR)"
else
	@for version in $(CLAUDE_CODE_VERSION) $(CLAUDE_CODE_OLDER); do \
	  if [ -x $(CLAUDE_DIR)/$$version/node_modules/.bin/claude ]; then :; \
	  elif command -v npm >/dev/null 2>&1; then \
	    echo "installing Claude Code $$version into $(CLAUDE_DIR)/$$version for the end-to-end tests"; \
	    mkdir -p $(CLAUDE_DIR)/$$version && npm install --prefix $(CLAUDE_DIR)/$$version --no-audit --no-fund \
	      --loglevel=error @anthropic-ai/claude-code@$$version || echo "Claude Code $$version not installed"; \
	  else echo "npm not found: the Claude Code CLI tests will be skipped"; fi; \
	done
	@for spec in codex:@openai/codex@$(CODEX_VERSION):codex gemini-cli:@google/gemini-cli@$(GEMINI_CLI_VERSION):gemini; do \
	  dir=$${spec%%:*}; rest=$${spec#*:}; package=$${rest%:*}; bin=$${rest##*:}; version=$${package##*@}; \
	  if [ -x .cache/$$dir/$$version/node_modules/.bin/$$bin ]; then :; \
	  elif command -v npm >/dev/null 2>&1; then \
	    echo "installing $$package into .cache/$$dir/$$version for the end-to-end tests"; \
	    mkdir -p .cache/$$dir/$$version && npm install --prefix .cache/$$dir/$$version --no-audit --no-fund \
	      --loglevel=error $$package || echo "$$package not installed"; \
	  fi; \
	done
endif

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check agproxy.py tests tools bench
	$(VPY) $(STDLIB_ONLY) agproxy.py
	@# vermin exits 0 when it cannot tell the version (a str/bytes mix-up of its own): that is a failure too
	@out=$$($(VENV)/bin/vermin --target=3.9- --no-tips --violations agproxy.py); status=$$?; echo "$$out"; \
	  [ $$status -eq 0 ] || exit $$status; \
	  echo "$$out" | grep -q "^Minimum required versions: 3\." || { echo "vermin could not read agproxy.py as Python 3"; exit 1; }

# The charts (bench/*.png) are drawn with the venv's matplotlib; agproxy and the clients run on $(PYTHON).
# The Claude Code bodies and the stall measure a request captured from the pinned CLI (claude-cli).
bench: build $(VENV)/.installed claude-cli
	$(PYTHON) bench/run.py

# A long fuzz run against a real agproxy (minutes; not part of `make test`): FUZZ_ARGS="--cases 100000 --seed 7";
# FUZZ_ARGS="--faults" sends 30% of the cases to misbehaving upstreams too.
FUZZ_ARGS ?=
fuzz: build
	$(PYTHON) tools/fuzz.py $(FUZZ_ARGS)

# The same translation workload through claude-code-router and LiteLLM (installed into .cache/peers
# on first use; benchmark-only, never a dependency of agproxy).
bench-peers: build
	$(PYTHON) bench/peers.py

clean:
	rm -rf $(VENV) agproxy.pyz .pytest_cache .ruff_cache .hypothesis .cache
