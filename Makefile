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

# The main job end to end on SynthVox. Until the SynthVox issue (3) lands, the demo prepares a
# small folder corpus made on the spot and shows the front end; stage 1, stage 2 and generation
# join this target as they land (issues 4 and 5).
DEMO ?= runs/demo
demo: install
	@if $(PY) -c "import scldm.data.synthvox" 2>/dev/null; then \
	  $(VENV)/bin/scldm prepare synthvox --out $(DEMO)/data --speakers 600 --image-size 64 && \
	  $(VENV)/bin/scldm synthvox-oracle --data $(DEMO)/data --out $(DEMO)/oracle; \
	else \
	  $(PY) benchmarks/demo_corpus.py $(DEMO)/corpus && \
	  $(VENV)/bin/scldm prepare folder --root $(DEMO)/corpus --out $(DEMO)/data --image-size 64 --workers 2; \
	fi
	@echo
	@echo "demo: prepared data in $(DEMO)/data"
	@echo "demo: not yet implemented: SynthVox (issue 3), stage 1 pre-training (4), stage 2 diffusion and generation (5)"

bench: install
	$(PY) benchmarks/frontend.py

clean:
	rm -rf $(VENV) build src/*.egg-info
