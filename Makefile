# The two commands a fresh machine needs: `make test` and `make demo`.
# Each bootstraps .venv on first use: torch==2.13.0 first, then everything else
# under constraints.txt so pip can never swap torch for another build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo bench bench-gpu venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

# One pytest-xdist worker per logical CPU; worksteal evens out the long tests (the Ray cluster run).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n logical --dist worksteal tests

demo: $(STAMP)
	$(BIN)/python -m sdvg_core demo --out out/demo

bench: $(STAMP)
	$(BIN)/python -m sdvg_core bench --preset cpu --out bench-results/

# On a CUDA machine, with the interpreter that has its CUDA torch and requirements.txt
# (no .venv: the CPU torch it pins cannot see a GPU). Minutes on one H100.
bench-gpu:
	$(PYTHON) -m sdvg_core bench --preset gpu --out bench-results/

clean:
	rm -rf $(VENV) out bench-results
