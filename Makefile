# Two commands do everything on a fresh machine:
#   make lab    set up .venv and start JupyterLab on notebooks/ (tiny profile by default)
#   make test   set up .venv and run the library tests and every notebook under nbval
# and, for the service of notebook 10 (Docker; see scripts/test_image.sh):
#   make image       build the service image (python:3.12-slim base; BASE=... for another)
#   make test-image  build it and run the service's HTTP tests against the container;
#                    says why and skips (exit 0) where no engine or base image can be had
#                    a pass records the image size and peak memory (notebook 10 prints it)
# and, for the workshop (see scripts/colab_replica.py):
#   make colab-replica  every notebook as a new Colab CPU runtime, timed against its budgets
VENV   := .venv
STAMP  := $(VENV)/.installed
export LLMOPS_PROFILE ?= tiny

.PHONY: setup lab test notebooks lint clean image test-image colab-replica

$(STAMP): requirements.txt requirements-models.txt requirements-dev.txt constraints.txt \
          pyproject.toml scripts/setup_env.sh scripts/install_torch.py \
          llmops_lib/data/build_llama_tools.sh
	scripts/setup_env.sh
	touch $@

# One llama.cpp build gives the binding's wheel and llama.cpp's own tools, cached outside
# the repo per llama-cpp-python version and backend; setup_env.sh starts it. Here it is a
# no-op check that rebuilds only if that cache was removed (preflight.sh first names any
# missing compiler or disk space).
setup: $(STAMP)
	scripts/preflight.sh
	llmops_lib/data/build_llama_tools.sh

lab: setup
	scripts/lab.sh

# Two workers, each taking whole files in the order tests/conftest.py sets (a notebook's
# cells in one kernel, in sequence); two at a time also bounds the memory in use.
test: setup
	$(VENV)/bin/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder \
	    --nbval-lax --nbval-current-env tests notebooks

# Re-execute the notebooks one at a time in fresh kernels (refuses on a busy machine); the
# committed outputs come only from this. NB=notebooks/05_conversations.ipynb for one.
notebooks: setup
	scripts/run_notebooks.sh $(NB)

image: $(STAMP)
	scripts/test_image.sh build

# Bounded by TEST_IMAGE_BUDGET_S (600 s); needs .venv for the tests and the free port.
test-image: $(STAMP)
	scripts/test_image.sh test

# Colab's CPU image rebuilt from its published package list (PyPI only), the llama.cpp release
# asset served on 127.0.0.1, each notebook run as a new runtime; fails on a cell error or a
# setup cell over 2 min. NB="00 04" for some; the report goes to results/colab-replica/.
colab-replica: $(STAMP)
	$(VENV)/bin/python scripts/colab_replica.py $(NB)

lint: setup
	$(VENV)/bin/ruff check llmops_lib tests
	$(VENV)/bin/ruff format --check llmops_lib tests

clean:
	rm -rf $(VENV)
