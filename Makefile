# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
VENV ?= .venv
FB3STACK_DATA ?= $(abspath ../shared/data/fb3)
ZOO ?= configs/zoo/cpu.yaml
WORKSPACE ?= workspace
export FB3STACK_DATA

.PHONY: setup run test test-slow lint bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $@

# the main job on the default CPU config: data check, folds, zoo, blend, submission.csv + report.md
run: setup
	$(VENV)/bin/fb3stack run $(ZOO) --workspace $(WORKSPACE)

test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check fb3stack tests benchmarks
