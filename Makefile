# The two commands a new machine needs: `make demo` and `make test`. Both create or reuse .venv.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo
SHELL  := /bin/bash
ES     := $(VENV)/bin/embedstore
# which FAISS build this venv holds: gpu once `make install-gpu` ran in it, else cpu (never both)
FAISS  := $(if $(wildcard $(VENV)/.faiss-gpu),gpu,cpu)

.PHONY: demo test test-slow test-gpu install-gpu bench clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision are pinned together (see README): install them first, by version.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[$(FAISS),dev]'
	touch $(STAMP)

# The main job end to end on the embedded default: phantom cohort -> store -> encode -> index -> search,
# then the R3D recipe in short: fine-tune r3d on the cohort, encode with it, compare neighbours' EF class.
# Re-running it is idempotent: every step skips what is already done (an interrupted training resumes).
demo: $(STAMP)
	@echo "== 1/10 phantom cohort (synthetic, EchoNet-Dynamic-shaped) in $(DEMO)/cohort"
	$(ES) phantom $(DEMO)/cohort --patients 20 --videos-per-patient 3 --seed 1
	@echo "== 2/10 ingest into the store $(DEMO)/store"
	$(ES) ingest $(DEMO)/cohort --store $(DEMO)/store --reports $(DEMO)/cohort/reports.csv --quiet
	@echo "== 3/10 encode with r3d (no published weights on this machine: random init, on purpose and recorded)"
	$(ES) encode --store $(DEMO)/store --encoder r3d --random-init --quiet
	@echo "== 4/10 build the FAISS index"
	$(ES) index --store $(DEMO)/store --encoder r3d
	@echo "== 5/10 search by a video file"
	$(ES) search --store $(DEMO)/store --encoder r3d -k 5 --video "$$(ls $(DEMO)/cohort/Videos/*.avi | head -n 1)"
	@echo "== 6/10 store summary"
	$(ES) info --store $(DEMO)/store
	@# lr 1e-3, not the paper's 1e-5: that one fine-tunes a Kinetics start; this start is random (bench/train.py).
	@echo "== 7/10 fine-tune r3d as an EF < 50% classifier (TRAIN; epoch picked on VAL; TEST scored): short, from random init"
	@if [ -f $(DEMO)/r3d-phantom.pt ]; then echo "already trained: $(DEMO)/r3d-phantom.pt"; else \
	  $(ES) train r3d --store $(DEMO)/store --init random --epochs 3 --lr 1e-3 --accumulate 1 --clip-length 4 \
	    --quiet --out $(DEMO)/r3d-phantom.pt $$(ls $(DEMO)/r3d-phantom.pt.epoch* >/dev/null 2>&1 && echo --resume); fi
	@echo "== 8/10 encode with the trained checkpoint (a second store: a store holds one set of r3d weights)"
	$(ES) ingest $(DEMO)/cohort --store $(DEMO)/store-trained --quiet
	$(ES) encode --store $(DEMO)/store-trained --encoder r3d --weights $(DEMO)/r3d-phantom.pt --quiet
	@echo "== 9/10 do a video's nearest neighbours (other patients) share its EF class? random init, then trained"
	$(ES) eval --store $(DEMO)/store --encoder r3d --tasks neighbour_ef_class --bootstrap 200
	$(ES) eval --store $(DEMO)/store-trained --encoder r3d --tasks neighbour_ef_class --bootstrap 200
	@echo "== 10/10 leaderboard: every vector set (raw and centred) beside the pixel baseline (no weights), same tasks and splits"
	$(ES) eval --all --store $(DEMO)/store --bootstrap 200 --quiet
	$(ES) eval --all --store $(DEMO)/store-trained --bootstrap 200 --quiet

test: $(STAMP)
	bash tests/browser_setup.sh
	$(PY) -m pytest -q

# A CUDA machine: swap the CPU FAISS build for the GPU build of the same version (never both), then
# run the GPU tests and benchmarks in one go (bench/gpu_smoke.py, README "GPUs").
install-gpu: $(STAMP)
	touch $(VENV)/.faiss-gpu
	$(PY) -m pip uninstall -q -y faiss-cpu
	$(PY) -m pip install -q -e '.[gpu,dev]'

test-gpu: $(STAMP)
	$(PY) bench/gpu_smoke.py

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/encode.py
	$(PY) bench/search.py

clean-demo:
	rm -rf $(DEMO)
