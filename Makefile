# Quick start: `make demo` (set up, synthesize the demo corpus, train, register, promote, validate)
#              `make test` (set up and run the test suite)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
ASR    := $(VENV)/bin/asr
DEMO   ?= data/demo

.PHONY: install test demo lint mlproject clean

install: $(VENV)/.installed

# Reinstalls when the dependency list changes; the package itself is installed editable.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

test: install
	$(PY) -m pytest -q

demo: install
	@echo "== 1/5 demo corpus (text-to-speech, LibriSpeech layout) in $(DEMO)"
	$(ASR) data synth --root $(DEMO)
	@echo "== 2/5 train, log to MLflow, register and promote"
	$(ASR) train --train_data $(DEMO)/train --dev_data $(DEMO)/dev --test_data $(DEMO)/test
	@echo "== 3/5 word trigram LM from the training transcripts"
	$(ASR) lm build --from-dataset $(DEMO)/train --order 3 --out $(DEMO)/lm.arpa
	@echo "== 4/5 held-out voices, Production model: beam search + LM (greedy is in step 2's test line)"
	$(ASR) evaluate --dataset $(DEMO)/test --lm $(DEMO)/lm.arpa
	@echo "== 5/5 validate a held-out utterance by file id with the Production model"
	$(ASR) validate --dataset $(DEMO)/test --file_id $$($(PY) -c "from asr.data import read_split; print(read_split('$(DEMO)/test')[0].file_id)")

lint: install
	$(VENV)/bin/ruff check asr tests main.py

# MLproject is generated from asr/config.py; a test fails when it is stale.
mlproject: install
	$(PY) -m asr.config > MLproject

clean:
	rm -rf outputs mlflow.db mlruns/[0-9a-z]*
