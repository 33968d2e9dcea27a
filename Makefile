# The two commands a new machine needs: `make demo` and `make test`. Both create or reuse .venv.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo
SHELL  := /bin/bash

.PHONY: demo test test-slow bench clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision are pinned together (see README): install them first, by version.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash bench/demo.sh $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/encode.py
	$(PY) bench/search.py

clean-demo:
	rm -rf $(DEMO)
