# sphere_reg_ros: one-command set-up, tests, demo.  `make help` lists the targets.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sphere-reg-setup
PEERS_STAMP := $(VENV)/.sphere-reg-peers
SETUP_INPUTS := requirements.txt setup.py setup.cfg package.xml tools/build_tf2_msgs.sh \
                $(wildcard interfaces/tf2_msgs/*.txt interfaces/tf2_msgs/*.xml interfaces/tf2_msgs/msg/*.msg)

.PHONY: help setup peers lint test test-fast demo register-example benchmark-drr clean-venv

help:
	@echo "make setup      create $(VENV) (Python 3.11) with every pinned dependency, tf2_msgs, the package"
	@echo "make peers      add the peer baselines (xvr) that 'sphere-reg evaluate' compares against"
	@echo "make lint       ruff check and ruff format --check (pinned in requirements.txt, ruff.toml)"
	@echo "make test       lint, then the whole test suite (does set-up and peers first when needed)"
	@echo "make test-fast  the tests not marked slow (no node processes, training or demo)"
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

# The peer baselines (setup.py extra "peers": xvr), pinned by requirements.txt and
# requirements-peers.txt as constraints (pip refuses extras in constraints, hence the copy without
# them). Idempotent like setup; the tests need it, so `make test` does it (a few seconds).
peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(STAMP) requirements-peers.txt setup.py
	sed 's/\[[^]]*\]//' requirements.txt > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt \
	    -c requirements-peers.txt -e '.[peers]'
	@touch $(PEERS_STAMP)
	@echo "peers installed: xvr"

# Threads: torch and OpenMP default to one intra-op thread per core in *every* process; the tests,
# the demo (simulator + node + evaluator) and CI run several processes on small machines, where that
# oversubscription made one training test take 17 min instead of 13 s. One thread per process is
# the default here; `make demo THREADS=4` overrides it.
THREADS ?= 1
export OMP_NUM_THREADS := $(THREADS)
export MKL_NUM_THREADS := $(THREADS)

# Lint first: a style or unused-import error fails in seconds rather than after the suite.
lint: setup
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --check --no-cache .

test: setup peers lint
	$(PY) -m pytest

# The quick loop: everything but the tests marked slow (the DDS node processes, training, the demo).
test-fast: setup peers
	$(PY) -m pytest -m "not slow"

demo: setup
	$(PY) -m sphere_reg_ros.cli demo

benchmark-drr: setup
	$(PY) -m sphere_reg_ros.cli benchmark-drr

clean-venv:
	rm -rf $(VENV)
