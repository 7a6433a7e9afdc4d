# MicroPythonOS DownloadManager: `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MicroPython's webassembly port (32-bit, run by Node.js): make bench's heap figures at the ESP32's word size
WASM := .wasm
WASM_PORT := @micropython/micropython-webassembly-pyscript@1.28.0-6
WASM_STAMP := $(WASM)/.installed
# Point the suite at another unix-port build: make test MICROPYTHON=/path/to/micropython
MICROPYTHON ?= $(abspath $(BIN)/micropython)
export MICROPYTHON

# `make frozen`: MicroPython's unix port (what MicroPythonOS's desktop simulator is) built from source with the library
# frozen in through manifests/unix.py, as a firmware build freezes it. MICROPYTHON_SRC is MicroPython v1.28.0's source:
# a tarball (unpacked once into build/) or a checkout (git clone --recursive --branch v1.28.0). Default: the shared
# tarball next to this repository, or at /work/shared.
MICROPYTHON_TARBALL := micropython/micropython-1.28.0-src.tar.xz
MICROPYTHON_SRC ?= $(firstword $(wildcard ../shared/$(MICROPYTHON_TARBALL) /work/shared/$(MICROPYTHON_TARBALL)))
ifeq ($(MICROPYTHON_SRC),)
MPY_SOURCE := micropython-source-missing
else ifneq ($(wildcard $(MICROPYTHON_SRC)/py/mpconfig.h),)
MPY_DIR := $(abspath $(MICROPYTHON_SRC))
MPY_SOURCE := $(MPY_DIR)/py/mpconfig.h
else ifneq ($(wildcard $(MICROPYTHON_SRC)),)
MPY_DIR := $(abspath build/micropython)
MPY_SOURCE := build/micropython/.unpacked
else
MPY_SOURCE := micropython-source-missing
endif
MPY_CROSS := build/mpy-cross/mpy-cross
FROZEN_MICROPYTHON := build/unix/micropython
FROZEN_JOBS ?= 2
# Files and folders: a module removed from the library changes its folder's time.
FROZEN_INPUTS := $(shell find internal_filesystem/lib manifest.py manifests -not -name '*.pyc' -not -name __pycache__)
# `make test-m32` and `make test-m32-frozen`: the same unix port built 32-bit (the ESP32's word size: 4-byte words,
# 31-bit small ints, 30-bit ticks), as the pinned interpreter is and with the library frozen in. Not part of `make test`
# or CI: it needs a 32-bit C toolchain (Debian: apt-get install gcc-multilib).
M32_MICROPYTHON := build/unix-m32/micropython
M32_FROZEN_MICROPYTHON := build/unix-m32-frozen/micropython
M32_CAN_BUILD := $(shell echo 'int main(void) { return 0; }' | $(CC) -m32 -x c -o /dev/null - 2>/dev/null && echo yes)
M32_MAKE = $(MAKE) -C $(MPY_DIR)/ports/unix -j$(FROZEN_JOBS) MICROPY_FORCE_32BIT=1 MICROPY_PY_FFI=0 \
	MICROPY_MPYCROSS=$(abspath $(MPY_CROSS))

.PHONY: test test-frozen test-m32 test-m32-frozen m32-toolchain frozen micropython-source micropython-source-missing \
	mpy-package bench callgrind heap-census demo download clean

# The stamp is newer than the pins after one install, so a second run skips it.
$(STAMP): tools/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r tools/requirements.txt
	touch $@

$(WASM_STAMP):
	mkdir -p $(WASM)
	npm install --prefix $(WASM) --no-audit --no-fund --save-exact $(WASM_PORT)
	touch $@

# Four workers on two cores: the tests mostly wait for MicroPython and the servers (1011 tests: 147 s with two
# workers, 84 s with four, on 2026-12-06).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 4 tests

# The same suite on the unix port built here with the library frozen in.
test-frozen: $(STAMP) $(FROZEN_MICROPYTHON)
	MICROPYTHON=$(abspath $(FROZEN_MICROPYTHON)) $(BIN)/python -m pytest -q -n 4 tests

# The suite on the 32-bit builds (see M32_MICROPYTHON above)
test-m32: $(STAMP) $(M32_MICROPYTHON)
	MICROPYTHON=$(abspath $(M32_MICROPYTHON)) $(BIN)/python -m pytest -q -n 4 tests

test-m32-frozen: $(STAMP) $(M32_FROZEN_MICROPYTHON)
	MICROPYTHON=$(abspath $(M32_FROZEN_MICROPYTHON)) $(BIN)/python -m pytest -q -n 4 tests

frozen: $(FROZEN_MICROPYTHON)

build/micropython/.unpacked: $(MICROPYTHON_SRC)
	rm -rf build/micropython
	mkdir -p build/micropython
	tar -xf $< -C build/micropython --strip-components=1
	touch $@

micropython-source-missing:
	@echo "make frozen needs MicroPython v1.28.0's source and found none at" \
		"$(or $(MICROPYTHON_SRC),../shared/$(MICROPYTHON_TARBALL) or /work/shared/$(MICROPYTHON_TARBALL))." >&2
	@echo "Give it one: make frozen MICROPYTHON_SRC=<its source tarball, or a git clone --recursive --branch v1.28.0>" >&2
	@exit 1

# Prints where the source is (tests/test_foundation.py runs MicroPython's tools/makemanifest.py from it).
micropython-source: $(MPY_SOURCE)
	@echo $(MPY_DIR)

# Each build's output goes to a log; its end is shown if it fails.
$(MPY_CROSS): $(MPY_SOURCE)
	mkdir -p build
	$(MAKE) -C $(MPY_DIR)/mpy-cross -j$(FROZEN_JOBS) BUILD=$(abspath build/mpy-cross) >build/mpy-cross.log 2>&1 \
		|| { tail -n 30 build/mpy-cross.log; exit 1; }

# makemanifest.py regenerates frozen_content.c only for files newer than it: removing it drops a deleted module too.
$(FROZEN_MICROPYTHON): $(MPY_CROSS) $(FROZEN_INPUTS)
	rm -f build/unix/frozen_content.c
	$(MAKE) -C $(MPY_DIR)/ports/unix -j$(FROZEN_JOBS) BUILD=$(abspath build/unix) MICROPY_PY_FFI=0 \
		MICROPY_MPYCROSS=$(abspath $(MPY_CROSS)) FROZEN_MANIFEST=$(abspath manifests/unix.py) >build/unix.log 2>&1 \
		|| { tail -n 30 build/unix.log; exit 1; }
	touch $@

m32-toolchain:
	@$(if $(M32_CAN_BUILD),true,{ echo "make test-m32 needs a C compiler that builds 32-bit programs (-m32)," \
		"and found none: on Debian, apt-get install gcc-multilib" >&2; exit 1; })

$(M32_MICROPYTHON): $(MPY_CROSS) | m32-toolchain
	$(M32_MAKE) BUILD=$(abspath build/unix-m32) >build/unix-m32.log 2>&1 || { tail -n 30 build/unix-m32.log; exit 1; }
	touch $@

$(M32_FROZEN_MICROPYTHON): $(MPY_CROSS) $(FROZEN_INPUTS) | m32-toolchain
	rm -f build/unix-m32-frozen/frozen_content.c
	$(M32_MAKE) BUILD=$(abspath build/unix-m32-frozen) FROZEN_MANIFEST=$(abspath manifests/unix.py) \
		>build/unix-m32-frozen.log 2>&1 || { tail -n 30 build/unix-m32-frozen.log; exit 1; }
	touch $@

# The library as .mpy files and their package.json, for mip on a board short of heap (see docs/usage.md).
mpy-package: $(STAMP)
	rm -rf build/mpy-package
	$(BIN)/python tools/package.py build/mpy-package

clean:
	rm -rf $(VENV) $(WASM) build .pytest_cache

# Speed and memory, each figure side by side with its baseline in one run (docs/performance.md); heap figures of the
# frozen build too.
# With a 32-bit C toolchain the frozen figures are measured at the ESP32's word size too
BENCH_M32 := $(if $(M32_CAN_BUILD),$(M32_FROZEN_MICROPYTHON))
bench: $(STAMP) $(WASM_STAMP) $(FROZEN_MICROPYTHON) $(BENCH_M32)
	$(BIN)/python tools/bench.py --frozen $(FROZEN_MICROPYTHON) $(if $(BENCH_M32),--frozen-m32 $(BENCH_M32))

# Where a chunk's instructions go, ours against requests' readinto loop, function by function (needs valgrind)
callgrind: $(STAMP)
	$(BIN)/python tools/callgrind.py

# What the frozen library holds in the heap, by kind of object: the unix port built once more from a copy of
# MicroPython's source whose heap dump names each object's type (tools/heap_census.py); then how far lazy loading
# could lower the smallest heap: the library frozen without what a plain download never calls (tools/lazy_bound.py)
heap-census: $(STAMP) $(MPY_CROSS) $(FROZEN_MICROPYTHON)
	$(BIN)/python tools/heap_census.py $(MPY_DIR) $(MPY_CROSS)
	$(BIN)/python tools/lazy_bound.py $(MPY_DIR) $(MPY_CROSS) $(FROZEN_MICROPYTHON)

# The main job, runnable: a loopback server, an .mpk-sized download with progress, a dropped connection survived.
demo: $(STAMP)
	$(BIN)/python tools/demo.py

# Any URL: make download URL=https://... OUT=/tmp/file
download: $(STAMP)
	$(BIN)/python tools/demo.py --url "$(URL)" --out "$(OUT)"
