# DeepExec — two set-up commands for a newcomer: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install generate check-generated lint typecheck test bench demo docs docs-linkcheck clean

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	./scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

generate: $(STAMP)
	$(BIN)/python -m codegen generate

check-generated: $(STAMP)
	$(BIN)/python -m codegen check

lint: $(STAMP)
	$(BIN)/ruff check deepexec_sdk deepexec_server codegen generated tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy deepexec_sdk deepexec_server generated/deepexec_protocol

test: $(STAMP)
	$(BIN)/python -m codegen check
	$(BIN)/python -m pytest

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

demo: $(STAMP)
	$(BIN)/python examples/run_demo.py

# The documentation site (docs/): a fresh build (-E), every warning an error.
docs: $(STAMP)
	cd docs && ../$(BIN)/sphinx-build -E -W --keep-going -b html . _build/html
	@echo "open docs/_build/html/index.html"

# Internal links of the site (external ones are ignored: linkcheck_ignore in docs/conf.py).
docs-linkcheck: $(STAMP)
	cd docs && ../$(BIN)/sphinx-build -E -W --keep-going -b linkcheck . _build/linkcheck

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
