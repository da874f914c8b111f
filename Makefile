# Two commands: `make demo` (a 4-run sweep in the background + the live dashboard) and `make test`.
# Both set themselves up from nothing: a .venv with the project installed in it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROOT ?= runs
PORT ?= 8501
# The demo sweep: SGD, SGD-LAWN, Adam, Adam-LAWN on scikit-learn's digits (offline, real images).
# Curvature gets 10% of training time here (default 2%) so its curves fill in within minutes.
DEMO_ARGS ?= --dataset digits --model cnn --optimizers sgd,adam --lawn both --batch-sizes 32 \
             --epochs 30 --free-epochs 5 --warmup-epochs 1 --curvature-budget 0.1

.PHONY: install browser test demo clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# tests/test_browser.py drives Debian's chromium; install it where missing and we may (root, apt),
# else say why the browser test will be skipped. Never fails the build by itself.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$LAWN_MONITOR_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "browser: installing Debian's chromium for the browser test"; \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null \
	        || echo "browser: apt-get install chromium failed: tests/test_browser.py will be skipped"; \
	else echo "browser: no chromium and no root apt-get to install it: tests/test_browser.py will be skipped"; fi

test: install browser
	$(BIN)/python -m pytest -q

demo: install
	mkdir -p $(ROOT)
	@echo "demo: sweep running in the background (log: $(ROOT)/demo-sweep.log); dashboard at http://127.0.0.1:$(PORT)"
	@$(BIN)/lawn-monitor sweep $(DEMO_ARGS) --root $(ROOT) --no-progress > $(ROOT)/demo-sweep.log 2>&1 & \
	sweep=$$!; trap 'kill $$sweep 2>/dev/null' EXIT INT TERM; \
	LAWN_MONITOR_ROOT=$(ROOT) $(BIN)/streamlit run app --server.headless true --server.address 127.0.0.1 \
	    --server.port $(PORT) --browser.gatherUsageStats false

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
