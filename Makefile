# `make test`: set up a virtual environment (if there is none), lint, build the docs,
# and run the suite on TensorFlow, then its JAX and PyTorch parts (`make test-jax`,
# `make test-torch`: tests/test_backends.py and test_backend_commands.py on that
# backend, one file per pytest-xdist worker).
# `make docs`: the documentation site (mkdocs.yml) into site/, warnings as errors.
# `make notebooks`: the guides (docs/guides/*.py) as notebooks in notebooks/, for Colab
# (`make notebooks REPOSITORY=https://...`: where their first cell installs the package from).
# `make demo`: set up and run the main job on the bundled offline data.
# `make lint`: ruff's linter and formatter check (configured in pyproject.toml).
# `make sweep`: measure excess capacity on the bundled data by bisection (a search);
# `make sweep-grid`: the same measured with a grid (every point trained).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-jax test-torch lint docs notebooks demo sweep sweep-grid benchmark clean

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

# torch (the reference extra, for the tests against PyTorch): 2.13.0 is the
# CPU build where the machine carries one (192 MB); PyPI's builds bring CUDA
# (about 3 GB). TORCH= installs whatever the extra asks for.
TORCH ?= torch==2.13.0

$(STAMP): $(PYTHON) setup.cfg pyproject.toml
	$(if $(TORCH),$(PYTHON) -m pip install --quiet "$(TORCH)")
	$(PYTHON) -m pip install --quiet -e ".[test,jax,torch,reference,docs]"
	touch $(STAMP)

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The repository the notebooks' Colab cells install from: REPOSITORY=https://...,
# else git's origin when it is an https URL (Colab cannot use ssh).
REPOSITORY ?= $(filter https://%,$(shell git remote get-url origin 2>/dev/null))

notebooks: $(STAMP)
	mkdir -p notebooks
	for guide in docs/guides/*.py; do \
		$(VENV)/bin/jupytext --quiet --to ipynb --output notebooks/$$(basename $$guide .py).ipynb $$guide; \
	done
	$(if $(REPOSITORY),sed -i 's|https://github.com/OWNER/keras_capacity|$(REPOSITORY)|' notebooks/*.ipynb)

test: lint docs
	$(PYTHON) -m pytest -q -n 2  # two processes (pytest-xdist): the subprocess tests overlap
	rm -rf build/tensorflow_references  # the TensorFlow side, computed once for both jobs
	KC_TENSORFLOW_REFERENCES=$(CURDIR)/build/tensorflow_references $(MAKE) test-jax test-torch

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PYTHON) -m pytest -q -n 2 --dist loadfile tests/test_backends.py tests/test_backend_commands.py

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PYTHON) -m pytest -q -n 2 --dist loadfile tests/test_backends.py tests/test_backend_commands.py

demo: $(STAMP)
	$(PYTHON) train_main.py --flagfile=examples/demo.flags

sweep: $(STAMP)
	$(PYTHON) -m keras_capacity.sweep --flagfile=examples/sweep_bisect.flags --workdir=runs/sweep_bisect

sweep-grid: $(STAMP)
	$(PYTHON) -m keras_capacity.sweep --flagfile=examples/sweep_demo.flags --workdir=runs/sweep_demo

benchmark: $(STAMP)
	$(PYTHON) benchmarks/constraint_overhead.py

clean:
	rm -rf $(VENV) build site notebooks *.egg-info
