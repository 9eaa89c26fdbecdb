# The two commands of the README: `make demo` and `make test`. Everything installs itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned to the build that lies on this workplace's disk; override on other machines,
# e.g. `make test TORCH="torch torchvision"`.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v ffmpeg >/dev/null 2>&1 || { echo "installing ffmpeg (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq ffmpeg >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,eval]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

# The main job end to end on SynthVox: data, its oracle, stage 1. Stage 2 and generation join
# this target with issue 5. Steps are cut to fit a laptop; the full settings are the presets'.
DEMO ?= runs/demo
demo: install
	$(VENV)/bin/scldm prepare synthvox --out $(DEMO)/data --speakers 600 --image-size 64 --workers 2
	$(VENV)/bin/scldm synthvox-oracle --data $(DEMO)/data --out $(DEMO)/oracle --steps 800
	$(VENV)/bin/scldm pretrain --data $(DEMO)/data --out $(DEMO)/encoders --config small \
	  --set train.max_steps=400 --set train.eval_every=200 --set train.save_every=200 --resume latest
	@echo
	@echo "demo: data in $(DEMO)/data, oracle in $(DEMO)/oracle, stage-1 run in $(DEMO)/encoders"
	@echo "demo: look at $(DEMO)/encoders/samples/*.png and $(DEMO)/encoders/metrics.json"
	@echo "demo: not yet implemented: stage 2 diffusion and generation (issue 5)"

bench: install
	$(PY) benchmarks/frontend.py
	$(PY) benchmarks/synthvox.py
	$(PY) benchmarks/pretrain.py

clean:
	rm -rf $(VENV) build src/*.egg-info
