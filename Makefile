# The two commands of the README: `make demo` and `make test`. Everything installs itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned to the build that lies on this workplace's disk; override on other machines,
# e.g. `make test TORCH="torch torchvision"`.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install test-sounds real-voices test test-slow test-browser test-all lint demo app bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v ffmpeg >/dev/null 2>&1 || { echo "installing ffmpeg (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq ffmpeg >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,eval,app]'
	@# the pretrained GE2E speaker encoder ships inside this wheel; --no-deps, since its own
	@# dependency webrtcvad compiles from source (webrtcvad-wheels, a dependency, replaces it)
	$(PY) -m pip install -q --no-deps resemblyzer==0.1.4
	@touch $(STAMP)

# real recordings of named speakers for the speaker-encoder tests (Debian's asterisk prompts)
TEST_SOUNDS := asterisk-core-sounds-en-wav asterisk-core-sounds-it-wav asterisk-prompt-it-menardi-wav
test-sounds:
	@[ -d /usr/share/asterisk/sounds/it_IT_m_Carlo ] && [ -d /usr/share/asterisk/sounds/it_IT_f_Menardi ] || { echo "installing $(TEST_SOUNDS)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq $(TEST_SOUNDS) >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(TEST_SOUNDS) >/dev/null; }; }

test: install test-sounds
	$(PY) -m pytest -q

# the long end-to-end tests (marked `slow`), which `make test` leaves out; CI runs them after it
test-slow: install
	$(PY) -m pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && echo "no slow tests" || exit $$rc

# the app in a real browser: Debian's Chromium, driven by Playwright (no browser download)
CHROMIUM ?= /usr/bin/chromium
test-browser: install
	@[ -x $(CHROMIUM) ] || { echo "installing chromium (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }; }
	SCLDM_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q -m browser

test-all: install test-sounds
	$(PY) -m pytest -q -m ""

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

# The main job end to end on SynthVox: data, its oracle, stage 1, the face prior, stage 2 and
# faces for held-out voices. Stage 1 (small-real) hears with the pretrained GE2E encoder minus
# its "real recording" direction, so that real voices work too
# (docs/notes/2026-12-02-real-voices-ge2e-direction.md); its steps are cut to fit a laptop.
# Stage 2 runs small-real's own (1,700 v-prediction UNet steps on 4 × 16 × 16 latents, ~8 min;
# docs/notes/2026-12-01-v-prediction-demo.md). Stage 1 keeps the eyes in the latent (small's wide
# encoder, the eye band weighed 8 times); stage 2 first trains a new face decoder on it (1,600
# steps, ~3.5 min; in bfloat16 where the CPU runs it natively) with a position bias and, from step
# 1,200, a discriminator shown the eye band: the faces have eyes and are harder to tell from true
# ones than before (docs/notes/2026-12-03-demo-eyes.md).
DEMO ?= runs/demo
demo: install
	$(VENV)/bin/scldm prepare synthvox --out $(DEMO)/data --speakers 600 --image-size 64 --workers 2
	$(VENV)/bin/scldm synthvox-oracle --data $(DEMO)/data --out $(DEMO)/oracle --steps 600
	$(VENV)/bin/scldm pretrain --data $(DEMO)/data --out $(DEMO)/encoders --config small-real \
	  --set train.max_steps=800 --set train.batch_size=32 --set train.eval_every=400 \
	  --set train.save_every=400 --resume latest
	$(VENV)/bin/scldm prior --encoders $(DEMO)/encoders --data $(DEMO)/data
	$(VENV)/bin/scldm train --encoders $(DEMO)/encoders --data $(DEMO)/data --out $(DEMO)/ldm \
	  --config small-real --set train.eval_every=800 --resume latest
	$(VENV)/bin/scldm generate --data $(DEMO)/data --split test --speakers 4 \
	  --model $(DEMO)/ldm/pipeline -o $(DEMO)/faces --num-images 4
	$(VENV)/bin/scldm evaluate --model $(DEMO)/ldm/pipeline --data $(DEMO)/data \
	  --oracle $(DEMO)/oracle --encoders $(DEMO)/encoders -o $(DEMO)/eval --batch-size 48 \
	  > $(DEMO)/eval.log
	$(PY) -m scldm.evaluation.demo_report $(DEMO)
	@echo
	@echo "demo: data $(DEMO)/data, oracle $(DEMO)/oracle, stage 1 $(DEMO)/encoders, stage 2 $(DEMO)/ldm"
	@echo "demo: the report is $(DEMO)/report.md (faces, oracle metrics beside floor and chance, prior)"
	@echo "demo: try  $(VENV)/bin/scldm generate any.wav --model $(DEMO)/ldm/pipeline -o out/"
	@echo "demo: or   make app   (a web page to speak into);  make real-voices  (21 real speakers)"

# the demo model on real people's voices: a set built from recordings that Debian packages ship
# (installed when missing), faces read by the demo's oracle (benchmarks/real_voices.py)
REAL_VOICE_PKGS := asterisk-core-sounds-en-wav asterisk-core-sounds-fr-wav \
  asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav asterisk-prompt-it-menardi-wav \
  asterisk-prompt-es-co asterisk-prompt-fr-armelle ktuberling-data alsa-utils sox
real-voices: install
	@[ -f $(DEMO)/ldm/pipeline/model_index.json ] || \
	  { echo "no model at $(DEMO)/ldm/pipeline yet: run \`make demo\` first"; exit 2; }
	@$(PY) benchmarks/real_voices.py build --out $(DEMO)/real_voices >/dev/null 2>&1 || { \
	  echo "installing the recordings (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq $(REAL_VOICE_PKGS) >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(REAL_VOICE_PKGS) >/dev/null; }; \
	  $(PY) benchmarks/real_voices.py build --out $(DEMO)/real_voices; }
	$(PY) benchmarks/real_voices.py check --model $(DEMO)/ldm/pipeline --oracle $(DEMO)/oracle \
	  --voices $(DEMO)/real_voices --name demo --results $(DEMO)

# the page for the model `make demo` trained: open http://127.0.0.1:7860 (PORT=... to change)
PORT ?= 7860
app: install
	@[ -f $(DEMO)/ldm/pipeline/model_index.json ] || \
	  { echo "no model at $(DEMO)/ldm/pipeline yet: run \`make demo\` first (about 20 minutes)"; exit 2; }
	$(VENV)/bin/scldm app --model $(DEMO)/ldm/pipeline --port $(PORT)

bench: install
	$(PY) benchmarks/frontend.py
	$(PY) benchmarks/flops.py
	$(PY) benchmarks/synthvox.py
	$(PY) benchmarks/pretrain.py
	@if [ -f $(DEMO)/ldm/pipeline/model_index.json ]; then \
	  $(PY) benchmarks/stage2_train.py --encoders $(DEMO)/encoders --data $(DEMO)/data && \
	  $(PY) benchmarks/decoder_refine.py --encoders $(DEMO)/encoders --data $(DEMO)/data && \
	  $(PY) benchmarks/sampling.py --model $(DEMO)/ldm/pipeline --data $(DEMO)/data \
	    --oracle $(DEMO)/oracle && \
	  $(PY) benchmarks/app.py --model $(DEMO)/ldm/pipeline \
	    --voice $$(ls $(DEMO)/data/audio/*/0.wav | head -1); \
	else echo "bench: stage2_train.py, decoder_refine.py, sampling.py and app.py need the runs of 'make demo' in $(DEMO)"; fi

clean:
	rm -rf $(VENV) build src/*.egg-info
