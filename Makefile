# The two commands of the README, and the checks CI runs.
PYTHON ?= python3

.PHONY: quickstart test install lint bench

install:
	$(PYTHON) -m pip install -q -e '.[test,aws]'

# Runs examples/quickstart.yaml on this machine and prints the results.
quickstart:
	$(PYTHON) -m pip install -q -e .
	cloudsend run examples/quickstart.yaml
	@latest=$$(ls -d examples/results/quickstart/run-* | sort -V | tail -1); \
	  first=$$(ls $$latest/*/report.txt | head -1); \
	  echo; echo "== $$first =="; cat "$$first"

# The whole test suite, plus ruff and mypy (what .ci/run calls).
test: install
	$(PYTHON) -m ruff check cloudsend tests benchmarks stacks
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -q -p no:cacheprovider

bench:
	$(PYTHON) benchmarks/startup.py
	$(PYTHON) benchmarks/load.py
	$(PYTHON) benchmarks/pack.py
