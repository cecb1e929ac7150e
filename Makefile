# The two commands of the README. Each sets up what it needs first (scripts/bootstrap.sh).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test setup bench faults soak lint

demo:
	@scripts/bootstrap.sh
	@$(VENV)/bin/taskcreds demo

test:
	@scripts/bootstrap.sh --test
	@scripts/run-tests.sh $(PYTEST_ARGS)

setup:
	@scripts/bootstrap.sh --test

bench:
	@scripts/bootstrap.sh --test
	@for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done

# issue 7: the fault matrix (a table; also run by `make test`) and the full 10-minute, 500-pod soak
faults:
	@scripts/bootstrap.sh --test
	@$(VENV)/bin/python -m tests.scenarios.faults

soak:
	@scripts/bootstrap.sh --test
	@$(VENV)/bin/python -m tests.soak

lint:
	@$(VENV)/bin/ruff check taskcreds operator sidecar tests bench
	@$(VENV)/bin/mypy taskcreds operator sidecar
