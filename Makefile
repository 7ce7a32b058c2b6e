# Every target sets up what it needs on a fresh clone: the venv and the pinned stack.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/latest
# DATASET: a hub id, a local folder (hub or official layout) or "synthetic".
# Empty: $$URBANSOUND_DATASET, else the hub id danavery/urbansound8K.
DATASET ?=
# Extra runner arguments, e.g. PARAMS='-p train_folds "[1]" -p val_fold 2 -p test_fold 3'
PARAMS ?=

.PHONY: study test test-fast test-notebooks mutation lab site bench sync clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c 'from urbansound_nb.runner import configure_lab; print("JupyterLab settings:", configure_lab())'
	touch $@

## the study: every notebook headless on $(DATASET), then the report site
study: $(STAMP)
	$(BIN)/urbansound-nb run --run-dir $(RUN_DIR) $(if $(DATASET),--dataset $(DATASET)) $(PARAMS) --site

## the tests: ruff, notebooks regenerated, package == fresh export, nbdev-test, pytest (what CI runs); the reduced
## study is made in the background while the other tests run
test: $(STAMP)
	$(BIN)/ruff check urbansound_nb nbs tests docs/trials
	$(BIN)/urbansound-nb sync --no-export
	$(BIN)/python -m pytest tests --durations=15

## the fast tier, while you work: ruff, the export check, unit tests, nbdev-test of the library notebooks
test-fast: $(STAMP)
	$(BIN)/ruff check urbansound_nb nbs tests docs/trials
	$(BIN)/urbansound-nb sync --no-export
	$(BIN)/python -m pytest tests -m "not study and not slow" --durations=5

## nbdev-test of every notebook, chapters included on their synthetic stand-in (not in `test`: the reduced study
## runs the chapters on real audio)
test-notebooks: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing

## mutation testing of the functions that carry the protocol and the numbers (params, data, selection, metrics,
## windows, audio) on their fast tests, then each module's score and the surviving mutants (a report, not CI)
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[mutation]'
	$(BIN)/mutmut run --max-children 2 $$($(BIN)/python tests/mutation_report.py --globs) > /dev/null || true
	$(BIN)/python tests/mutation_report.py

## JupyterLab, with nbs/*.py opening as notebooks
lab: $(STAMP)
	$(BIN)/urbansound-nb lab

site: $(STAMP)
	$(BIN)/urbansound-nb site --run-dir $(RUN_DIR)

bench: $(STAMP)
	$(BIN)/urbansound-nb bench $(if $(DATASET),--dataset $(DATASET))

sync: $(STAMP)
	$(BIN)/urbansound-nb sync

clean:
	rm -rf $(VENV) nbs/*.ipynb _site _docs mutants
