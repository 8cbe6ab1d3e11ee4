# The two commands a user needs: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the test suite talks to (real servers, no mocks). Installed only when missing.
APT_TEST_PACKAGES := redis-server victoria-metrics
# The single-file binary (`make binary`): dist/ando-VERSION-linux-ARCH; see docs/binary.md.
ANDO_VERSION  := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ando/__init__.py)
BINARY        := dist/ando-$(ANDO_VERSION)-linux-$(shell uname -m)
BINARY_STATIC := $(BINARY)-static
BINARY_SRC    := edge/ando.spec pyproject.toml \
                 $(shell find ando schemas lua -type f -not -path '*/__pycache__/*')
BUILD_STAMP   := $(VENV)/.installed-build
STATIC_PYTHON ?= /usr/bin/python3
STATIC_VENV   := .venv-static
# --no-compress: 2.5 MB more (21 MB), and each start about 0.3-0.5 s sooner (no xz to undo)
STATICX_FLAGS ?= --strip
PYINSTALLER   := --noconfirm --log-level WARN edge/ando.spec

.PHONY: run test lint bench bench-validate clean binary binary-static

$(STAMP): pyproject.toml
	@build/ensure-venv.sh $(PYTHON) $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/ando run -c config/ando.yaml

# tests/e2e runs against the single-file binary, built first (only when a source changed), so a
# module missing from the bundle fails here rather than on a device.
test: $(STAMP) $(BINARY)
	@build/ensure-apt.sh $(APT_TEST_PACKAGES)
	$(BIN)/ruff check ando tests bench
	ANDO_BINARY=$(BINARY) $(BIN)/python -m pytest -q

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

# The single-file executable (edge/ando.spec; docs/binary.md), rebuilt when anything it bundles
# changes. binary-static wraps the same build in staticx, from a venv on Debian's python3: pyenv's
# interpreter and its libpython carry RUNPATH, which staticx refuses.
$(BUILD_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,build]'
	@touch $@

binary: $(BINARY)

$(BINARY): $(BUILD_STAMP) $(BINARY_SRC)
	@build/ensure-apt.sh binutils
	$(BIN)/pyinstaller --distpath dist --workpath build/tmp/pyinstaller $(PYINSTALLER)
	@ls -l $@

$(STATIC_VENV)/.installed: pyproject.toml
	@build/ensure-apt.sh python3 python3-venv patchelf binutils
	@build/ensure-apt.sh libpython$$($(STATIC_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	@build/ensure-venv.sh $(STATIC_PYTHON) $(STATIC_VENV)
	$(STATIC_VENV)/bin/pip install -q -e '.[build]'
	@touch $@

binary-static: $(BINARY_STATIC)

$(BINARY_STATIC): $(STATIC_VENV)/.installed $(BINARY_SRC)
	$(STATIC_VENV)/bin/pyinstaller --distpath build/tmp/static-dist \
		--workpath build/tmp/pyinstaller-static $(PYINSTALLER)
	$(STATIC_VENV)/bin/staticx $(STATICX_FLAGS) build/tmp/static-dist/$(notdir $(BINARY)) $@
	@chmod 755 $@  # staticx writes it owner-only
	@ls -l $@

clean:
	rm -rf $(VENV) $(STATIC_VENV) build/tmp dist .pytest_cache

# The aarch64 binary, dist/ando-VERSION-linux-aarch64, built on this x86_64 machine under qemu
# emulation (an arm64 Debian root in build/tmp/arm64, reused between runs), then smoke-tested the
# same way. Minutes, needs root: not part of `make test`. ARM64_ARGS=--e2e also runs tests/e2e
# against it. See docs/arm64.md.
.PHONY: binary-arm64
binary-arm64: $(STAMP)
	edge/build-arm64.sh $(ARM64_ARGS)
