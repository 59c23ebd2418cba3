# Quick start: `make demo` (set up, synthesize the demo corpus, train, register, promote, validate)
#              `make test` (set up and run the test suite)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
ASR    := $(VENV)/bin/asr
LANGUAGE ?= en
# English: data/demo and SpeechRecognitionModel; another language (es, de, fr): its own corpus folder, registered
# model and learned vocabulary
DEMO   ?= $(if $(filter en,$(LANGUAGE)),data/demo,data/demo-$(LANGUAGE))
DEMO_MODEL ?= $(if $(filter en,$(LANGUAGE)),SpeechRecognitionModel,SpeechRecognitionModel-$(LANGUAGE))
DEMO_TEXT := $(if $(filter en,$(LANGUAGE)),,--language $(LANGUAGE))

LOCK   := requirements.lock

.PHONY: install lock test test-fast demo lint mlproject clean

install: $(VENV)/.installed

# The environment is exactly the lock (every package at an exact version, hash-checked): a lock whose content
# changed gets a new virtualenv, so what is installed never drifts from what a fresh clone installs. pip and
# setuptools are in the lock too; the package itself is installed editable, built by the locked setuptools (quietly:
# its editable-mode notice is advice for other layouts).
$(VENV)/.locked: $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "$(PYTHON) is older than Python 3.11, which this project needs: make ... PYTHON=python3.11" >&2; exit 1; }
	@if cmp -s $(LOCK) $(VENV)/requirements.lock; then touch $@; exit 0; fi; \
	  set -ex; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install --quiet --require-hashes -r $(LOCK); \
	  cp $(LOCK) $(VENV)/requirements.lock; touch $@

$(VENV)/.installed: $(VENV)/.locked pyproject.toml
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# Resolves pyproject.toml's dependencies (with the dev extra, the build backend and pip) for every platform and
# Python >= 3.11 with uv, and writes the lock with hashes, then conda.yaml from it. Pins already in the lock are kept
# while they satisfy pyproject.toml; LOCK_FLAGS=--upgrade takes the newest releases, --upgrade-package NAME one.
# The lock file is replaced only when it changes (a new lock means a new .venv at the next `make install`).
LOCK_FLAGS ?=
lock: install
	cp $(LOCK) $(LOCK).tmp
	$(PY) -c "import tomllib; print('\\n'.join(['pip', *tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']]))" \
	  | $(VENV)/bin/uv pip compile pyproject.toml - --extra dev --extra mic --universal --python-version 3.11 --generate-hashes \
	      --custom-compile-command 'make lock' --quiet $(LOCK_FLAGS) -o $(LOCK).tmp
	cmp -s $(LOCK).tmp $(LOCK) && rm $(LOCK).tmp || mv $(LOCK).tmp $(LOCK)
	$(PY) -m asr.tracking.requirements conda > conda.yaml.tmp && mv conda.yaml.tmp conda.yaml

test: install
	$(PY) -m pytest -q

# The unit tier: everything not marked slow (no training run, server, subprocess or real LibriSpeech).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	@echo "== 1/5 demo corpus ($(LANGUAGE), text-to-speech, LibriSpeech layout) in $(DEMO)"
	$(ASR) data synth --language $(LANGUAGE) --root $(DEMO)
	@echo "== 2/5 train with a word trigram LM from the training transcripts (tuned on dev), log to MLflow, register and promote"
	$(ASR) train --train_data $(DEMO)/train --dev_data $(DEMO)/dev --test_data $(DEMO)/test --registered_model $(DEMO_MODEL) $(DEMO_TEXT)
	@echo "== 3/5 held-out voices, Production model, acoustic model alone: greedy decoding"
	$(ASR) evaluate --model_uri models:/$(DEMO_MODEL)@production --dataset $(DEMO)/test --decoder greedy
	@echo "== 4/5 held-out voices, Production model with its own decoder: beam search + the LM it was trained with"
	$(ASR) evaluate --model_uri models:/$(DEMO_MODEL)@production --dataset $(DEMO)/test
	@echo "== 5/5 validate a held-out utterance by file id with the Production model (its own decoder)"
	$(ASR) validate --registered_model $(DEMO_MODEL) --dataset $(DEMO)/test --file_id $$($(PY) -c "from asr.data.dataset import read_split; print(read_split('$(DEMO)/test')[0].file_id)")

lint: install
	$(VENV)/bin/ruff check asr tests main.py

# MLproject is generated from asr/settings.py; a test fails when it is stale.
mlproject: install
	$(PY) -m asr.settings > MLproject

clean:
	rm -rf outputs mlflow.db mlruns/[0-9a-z]*
