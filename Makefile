# abplatform: `make demo` and `make test` do all their own set-up on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.abplatform-installed
DEMO_DB ?= sqlite:///abplatform.db
PG_CLUSTER = $(shell ls /etc/postgresql 2>/dev/null | head -n 1)

.PHONY: help setup demo test check lint typecheck postgres browser bench bench-data clean

help:
	@echo "make demo   - set up, simulate examples/homepage_popularity.yaml, write report.html"
	@echo "make test   - set up, start PostgreSQL if needed, run the whole test suite"
	@echo "make check  - lint + typecheck + test"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make bench-data - install the MovieLens 100K wheel for bench/bench_public_dataset.py"

$(STAMP): requirements.lock pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/abplatform simulate examples/homepage_popularity.yaml --db $(DEMO_DB) --report report.html
	$(BIN)/abplatform analyze homepage_popularity --db $(DEMO_DB)
	@echo "open report.html in a browser"

postgres:
	@if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  echo "starting PostgreSQL $(PG_CLUSTER)"; \
	  pg_ctlcluster --skip-systemctl-redirect $(PG_CLUSTER) main start; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi

# Headless Chromium and its driver (Debian's packages) for the tests that open pages in a real browser.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  echo "installing Debian's chromium and chromium-driver"; \
	  apt-get install -y -q chromium chromium-driver >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null); \
	fi

test: setup postgres browser
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test

bench: setup
	$(BIN)/python bench/bench_hashing.py
	$(BIN)/python bench/bench_simulate.py
	$(BIN)/python bench/bench_analyze.py

# The RecBole wheel ships MovieLens 100K; its torch/ray dependencies are not needed to read it.
bench-data: setup
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-bench.txt

clean:
	rm -rf $(VENV) *.egg-info build dist report.html abplatform.db*
