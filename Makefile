# Two commands do everything on a fresh machine: `make reproduce` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNEL := ssl-adv
PROFILE ?= cpu

.PHONY: setup data reproduce test test-fast lab bench clean-results

setup: $(STAMP) data

# Re-installs only when pyproject.toml changes; torch/torchvision come from the local wheel cache on these machines.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" >/dev/null
	touch $(STAMP)

# Fashion-MNIST under data/: Debian's package (apt-get when missing), else torchvision's download; idempotent.
data: $(STAMP)
	$(PY) -m utils.data --root data

# `make reproduce PROFILE=paper SET="imagenet_root=/data/imagenet checkpoint_root=/data/ckpt"`: each word of SET is
# passed on as `--set KEY=VALUE`. PROFILE=paper-mini generates its miniature inputs first (idempotent).
reproduce: setup
ifeq ($(PROFILE),paper-mini)
	$(PY) -m utils.miniature --out data/paper-mini
endif
	$(PY) -m utils.pipeline --profile $(PROFILE) $(foreach s,$(SET),--set $(s))
# The README quotes the cpu profile: its numbers are rewritten from the cpu tables (utils/readme.py).
ifeq ($(PROFILE),cpu)
	$(PY) -m utils.readme --profile $(PROFILE)
endif

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: setup
	$(PY) bench/attacks.py

clean-results:
	rm -rf results/ runs/ cache/
