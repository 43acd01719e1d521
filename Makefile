# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The exact pin takes the CPU build that lies on this kind of machine's disk; the package itself asks only torch>=2.1.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test demo benchmark basemodel lab-report clean
# The emoji font the world's glyphs were rendered from: one test re-renders two glyphs and compares (Debian package).
FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test,baselines,experiments,serve]'
	touch $@

$(FONT):
	@(apt-get install -y -q fonts-noto-color-emoji >/dev/null || (apt-get update -q >/dev/null && \
	  apt-get install -y -q fonts-noto-color-emoji >/dev/null)) 2>/dev/null || \
	  echo "fonts-noto-color-emoji could not be installed (apt-get as root): the glyph test will be skipped"

# The web page's tests drive Debian's Chromium through its ChromeDriver (browser downloads are not reachable here).
CHROMEDRIVER := /usr/bin/chromedriver
$(CHROMEDRIVER):
	(apt-get install -y -q chromium chromium-driver >/dev/null || (apt-get update -q >/dev/null && \
	  apt-get install -y -q chromium chromium-driver >/dev/null))

setup: $(VENV)/.installed $(FONT) $(CHROMEDRIVER)

test: $(VENV)/.installed $(FONT) $(CHROMEDRIVER)
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# The target owns demo-out: a second run moves the last one aside to demo-out.previous (the CLI itself still refuses
# to write into a user's own non-empty folder).
demo: $(VENV)/.installed
	rm -rf demo-out.previous
	if [ -d demo-out ]; then mv demo-out demo-out.previous; fi
	$(VENV)/bin/perfusion demo --out demo-out

benchmark: $(VENV)/.installed
	$(PY) benchmarks/overhead.py

# Train the families laboratory's base model, or continue it: every stage resumes from checkpoints/families (hours
# on 2 CPU cores; stop it any time). A new checkout has no checkpoints/ (it is not committed): the run then starts
# from the weights committed at the end of the last training session (FAMILIES_MODEL, via --init-from: tokenizer,
# autoencoder, UNet and text encoder; Adam's moments start afresh). The very first run started from the emoji
# model's weights (--warm-start on a fresh run directory; docs/basemodel.md). Then
# `$(PY) -m perfusion.world.basemodel.export --world families --run-dir checkpoints/families --out $(FAMILIES_MODEL)`.
RUN_DIR ?= checkpoints/families
FAMILIES_MODEL ?= src/perfusion/world/families/model
EMOJI_MODEL ?= src/perfusion/world/model
# bf16 autocast: 1.0 s against 1.77 s a step on a CPU with AVX-512 BF16; MIXED_PRECISION=no where bf16 is emulated.
MIXED_PRECISION ?= bf16
INIT_FROM = $(if $(wildcard $(FAMILIES_MODEL)/model_index.json),--init-from $(FAMILIES_MODEL))
# Without committed weights: the autoencoder object-weighted from the emoji model's, the UNet warm-started from it.
VAE_START = $(if $(INIT_FROM),$(INIT_FROM),--warm-start $(EMOJI_MODEL) --crop-size 0 --batch-size 16 --object-weight 4 \
  --anchor-weight 1 --learning-rate 3e-4 --max-steps 1600)
# The UNet's schedule is given once, to a new run: a checkpoint, or the committed folder's basemodel.json, keeps its own.
UNET_START = $(if $(wildcard $(RUN_DIR)/unet.ckpt)$(INIT_FROM),$(INIT_FROM),--warm-start $(EMOJI_MODEL) \
  --grounding-weight 0.3 --grounding-pixel-weight 0.1 --high-noise-fraction 0.15 --warmup-steps 200 --max-steps 16000 \
  --mixed-precision $(MIXED_PRECISION))
# The grounding's pixel term on each object's words jointly, the text encoder taught to tell attribute words apart
# (docs/basemodel.md: the jointly trained encoder had merged the pattern and shape words), and the attention readout
# (what an object's cells attend to must name its pattern: the words after the noun were not looked at); given on
# every run, so that a run resumed from a checkpoint or from the committed folder of an earlier setting takes them up.
UNET_TEXT ?= --grounding-pixel-tokens together --attribute-weight 0.1 --readout-weight 0.1
basemodel: $(VENV)/.installed
	$(PY) -m perfusion.world.basemodel.train_base --stage tokenizer --run-dir $(RUN_DIR) $(INIT_FROM)
	$(PY) -m perfusion.world.basemodel.train_base --stage vae --resume --run-dir $(RUN_DIR) $(VAE_START)
	$(PY) -m perfusion.world.basemodel.train_base --stage latents --run-dir $(RUN_DIR) --pool-size 30000
	OMP_WAIT_POLICY=PASSIVE $(PY) -m perfusion.world.basemodel.train_base --stage unet --resume --run-dir $(RUN_DIR) \
	  $(UNET_START) $(UNET_TEXT)

# The laboratory's report: base model, judge, controls and the seen-member control (lab-report/report.html and
# summary.json; about half an hour on 2 cores).
lab-report: $(VENV)/.installed
	$(PY) -m perfusion.world.families.lab_report --out lab-report

clean:
	rm -rf $(VENV) demo-out .pytest_cache
