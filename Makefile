# sphere_reg_ros: one-command set-up, tests, demo.  `make help` lists the targets.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sphere-reg-setup
SETUP_INPUTS := requirements.txt setup.py setup.cfg package.xml tools/build_tf2_msgs.sh \
                $(wildcard interfaces/tf2_msgs/*.txt interfaces/tf2_msgs/*.xml interfaces/tf2_msgs/msg/*.msg)

.PHONY: help setup test test-fast demo register-example benchmark-drr clean-venv

help:
	@echo "make setup      create $(VENV) (Python 3.11) with every pinned dependency, tf2_msgs, the package"
	@echo "make test       run the whole test suite (does set-up first when needed)"
	@echo "make demo       the main job on the embedded example CT (does set-up first when needed)"
	@echo "make benchmark-drr  DRR vs DRR+Jacobian cost on this machine"

setup: $(STAMP)

# Idempotent: re-runs only when an input changed or the venv is missing.
$(STAMP): $(SETUP_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check pip==26.3
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	bash tools/build_tf2_msgs.sh $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)
	@echo "set-up done: $(VENV)"

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) -m sphere_reg_ros.cli demo

benchmark-drr: setup
	$(PY) -m sphere_reg_ros.cli benchmark-drr

clean-venv:
	rm -rf $(VENV)
