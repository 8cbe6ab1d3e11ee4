# The two commands a user needs: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the test suite talks to (real servers, no mocks). Installed only when missing.
APT_TEST_PACKAGES := redis-server

.PHONY: run test lint bench bench-validate clean

$(STAMP): pyproject.toml
	@build/ensure-venv.sh $(PYTHON) $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/ando run -c config/ando.yaml

test: $(STAMP)
	@build/ensure-apt.sh $(APT_TEST_PACKAGES)
	$(BIN)/ruff check ando tests bench
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ando tests bench
	$(BIN)/ruff format --check ando tests bench

# Load benchmarks: `ando validate` timing, then Ando against nginx as a proxy (wrk). Pass options
# to the proxy benchmark with BENCH_ARGS, e.g. make bench BENCH_ARGS="--runs 1 --only nginx,ando".
bench: bench-validate
	@build/ensure-apt.sh nginx wrk
	$(BIN)/python bench/proxy_bench.py $(BENCH_ARGS)

bench-validate: $(STAMP)
	$(BIN)/python bench/validate_bench.py
	$(BIN)/python bench/router_bench.py

clean:
	rm -rf $(VENV) build/tmp .pytest_cache
