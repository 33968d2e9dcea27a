# The two commands a new machine needs: `make demo` and `make test`. Both create or reuse .venv.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo
SHELL  := /bin/bash
ES     := $(VENV)/bin/embedstore

.PHONY: demo test test-slow bench clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision are pinned together (see README): install them first, by version.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job end to end on the embedded default: phantom cohort -> store -> encode -> index -> search.
# Re-running it is idempotent: every step skips what is already done.
demo: $(STAMP)
	@echo "== 1/6 phantom cohort (synthetic, EchoNet-Dynamic-shaped) in $(DEMO)/cohort"
	$(ES) phantom $(DEMO)/cohort --patients 20 --videos-per-patient 3 --seed 1
	@echo "== 2/6 ingest into the store $(DEMO)/store"
	$(ES) ingest $(DEMO)/cohort --store $(DEMO)/store --reports $(DEMO)/cohort/reports.csv --quiet
	@echo "== 3/6 encode with r3d (no published weights on this machine: random init, on purpose and recorded)"
	$(ES) encode --store $(DEMO)/store --encoder r3d --random-init --quiet
	@echo "== 4/6 build the FAISS index"
	$(ES) index --store $(DEMO)/store --encoder r3d
	@echo "== 5/6 search by a video file"
	$(ES) search --store $(DEMO)/store --encoder r3d -k 5 --video "$$(ls $(DEMO)/cohort/Videos/*.avi | head -n 1)"
	@echo "== 6/6 store summary"
	$(ES) info --store $(DEMO)/store

test: $(STAMP)
	bash tests/browser_setup.sh
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/encode.py
	$(PY) bench/search.py

clean-demo:
	rm -rf $(DEMO)
