# Quick start: `make demo` (set-up + the whole workflow on a small dataset) and `make test` (set-up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# nnU-Net's own commands (nnUNetv2_train, ...) are run as subprocesses: they must be found on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test lint clean

# A virtual environment with nnunetv2_mapo installed the way users install it (a regular, non-editable install,
# which ships the start-up hook that lets nnU-Net find the trainers). torch comes from pip's normal resolution.
setup:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q ".[test]"
	@rm -rf build
	@$(BIN)/nnunetv2_mapo doctor --skip-paths

demo: setup
	$(BIN)/nnunetv2_mapo demo --workdir demo_run

lint: setup
	$(BIN)/ruff check .

# Two workers (one test module each at a time, the slowest first: tests/conftest.py): much of an end-to-end test is
# nnU-Net's single-threaded start-up, planning and export, which the other worker's training overlaps. Passive OpenMP
# waiting: two trainings share the cores, and spinning threads would take the time slices the other one needs.
test: setup lint
	cd tests && OMP_WAIT_POLICY=PASSIVE ../$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 .

clean:
	rm -rf $(VENV) build *.egg-info demo_run
