# Two commands: `make demo` (the main job on RefShapes, CPU) and `make test` (the test suite).
# Each creates .venv when missing and reinstalls the requirements (and the project, editable) only when requirements.txt or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.stamp

.PHONY: demo test clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/run_demo.py --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$status

clean-demo:
	rm -rf outputs/demo data/refshapes weight_tiny
