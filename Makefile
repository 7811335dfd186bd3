# Two commands: `make demo` (the main job on RefShapes; the GPU when one is visible, else the CPU) and `make test` (the test suite).
# Each creates .venv when missing and reinstalls the requirements only when requirements.txt or this file changed.
# The project itself is not installed: its folders (datasets/, models/, util/, ...) would shadow packages of the same
# name, such as Hugging Face's datasets; every command runs from the repository root (docs/install.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.stamp

.PHONY: demo test kernel clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)

# The uninstall removes the editable install of the project that earlier versions of this file made.
$(STAMP): requirements.txt Makefile | $(PY)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip uninstall --quiet --quiet --yes hcd
	touch $(STAMP)

# The C++ CPU kernel of models/ops compiles on first use (~30-60 s) and is cached by torch per machine and source
# (~/.cache/torch_extensions): a build step before the demo and the tests rather than a cost of their first user.
kernel: $(STAMP)
	$(PY) -c "from models.ops.kernels import cpu_kernel; cpu_kernel()"

demo: kernel
	$(PY) -m scripts.run_demo --out outputs/demo

test: kernel
	$(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$status

clean-demo:
	rm -rf outputs/demo data/refshapes weight_tiny
