# Learning Arc: `make demo` and `make test` are the two commands. Both create .venv on first use
# (installing the exact versions in constraints.txt) and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Datasets: downloaded on first use, or read from ARC_DATA_DIR. CI keeps offline copies in a folder
# beside the checkout (../shared/datasets), used when it exists; an ARC_DATA_DIR set by the caller wins.
ifeq ($(origin ARC_DATA_DIR), undefined)
ifneq ($(wildcard ../shared/datasets),)
export ARC_DATA_DIR := $(abspath ../shared/datasets)
endif
endif

.PHONY: venv data demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Datasets: found locally ($$ARC_DATA_DIR, data/cache) or downloaded once, with checksums, so that
# the tests themselves never touch the network.
data: $(STAMP)
	$(PY) -m data

# The demo needs Fashion-MNIST alone: fetch just that.
demo: $(STAMP)
	$(PY) -m data fashion-mnist
	$(PY) 04-cnns/resnet_torch.py

# pytest exits 5 when it collected no tests: that is a broken suite, never a pass.
test: data
	@$(PY) -m pytest -n auto $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): the suite's setup is broken" >&2; fi; \
	exit $$rc

# ruff check covers every file; the formatter covers the shared code (scripts keep their hand layout).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check data tests benchmarks
	$(PY) -m benchmarks.ledger render --check

bench: $(STAMP)
	$(PY) benchmarks/mlp_epoch.py
	$(PY) benchmarks/conv.py
	$(PY) benchmarks/cnn_zoo.py
	$(PY) benchmarks/rnn.py
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/gpt.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
