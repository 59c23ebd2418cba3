"""The registered version's description is its model card (Markdown): rendered from hand-made facts, and read back
from the registry of a real trained, registered model, whose splits, scores and commands it must name; a run
killed right after registering sets it on resume."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import (
    MODEL_NAME,
    asr_command,
    mlflow_store,
    new_store,
    only_run_dir,
    run_cli,
    subprocess_env,
    tiny_args,
)
from mlflow import MlflowClient

from asr import checkpoint as ckpt
from asr.cli import main as cli
from asr.config import DecodeConfig, FeatureConfig, ModelConfig
from asr.data.dataset import read_splits
from asr.tracking.model_card import Example, ModelCard, SplitRow, TrainingFacts, render


def card(**changes) -> ModelCard:
    facts = ModelCard(
        name="SpeechRecognitionModel", version="7", parameters=3_521_437,
        model=ModelConfig(cnn_layers=2, cnn_channels=32, rnn_layers=3, rnn_dim=256), features=FeatureConfig(),
        vocabulary=29, checkpoint="model.pt",
        splits=[SplitRow("train", "LibriSpeech/train-clean-100", "0123456789abcdef", 28539, 251, 100.59),
                SplitRow("dev", "LibriSpeech/dev-clean", "fedcba9876543210", 2703, 40, 5.3875),
                SplitRow("test", "LibriSpeech/test-clean", "00000000ffffffff", 13, 2, 0.0272)],
        training=TrainingFacts(epochs=9, max_epochs=12, best_epoch=6, seconds=3725.4, device="cuda",
                               hardware="NVIDIA H200", world=2, precision="bfloat16", threads=8, run_id="abc123"),
        decoder="beam+lm(order 3)",
        decode=DecodeConfig(decoder="beam", beam_size=50, lm="/out/run/lm.arpa", lm_weight=0.5, word_score=1.0),
        lm_order=3, grid_points=30,
        dev={"wer": 0.31234, "cer": 0.12, "wer_greedy": 0.4, "cer_greedy": 0.15},
        test={"wer": 0.42126, "cer": 0.2, "wer_greedy": 0.5, "cer_greedy": 0.25},
        example=Example("1089-134686-0000", "data/LibriSpeech/test-clean",
                        "data/LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac"))
    return replace(facts, **changes)


def fenced(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_the_card_renders_every_section_from_the_facts():
    text = render(card())
    first = text.splitlines()[0]
    assert first.startswith("**SpeechRecognitionModel version 7**: a 3.52 M-parameter")
    assert "served with beam+lm(order 3) decoding: held-out test WER 0.4213, CER 0.2000." in first
    headings = re.findall(r"^### (.+)$", text, re.M)
    assert headings == ["Model", "Features", "Training data", "Training", "Accuracy", "Decoder", "Use it"]
    for line in ("- Parameters: 3.52 M (3,521,437)",
                 "- Convolution: 2 residual CNN blocks of 32 channels, time stride 3",
                 "- Recurrence: 3 x 256 GRU (layers x units per direction), bidirectional",
                 "- Output: 29 classes per frame", "- Checkpoint: `model.pt`",
                 "- 13 MFCCs from 80 mel bands of 16000 Hz audio", "- Window 25 ms, hop 10 ms",
                 "- Normalization: per utterance", "- Epochs: 9 of 12 (best: epoch 6, early stop)",
                 "- Wall time: 1 h 2 min", "- Hardware: cuda (NVIDIA H200) x 2, bfloat16, 8 threads",
                 "- Run: `abc123`", "- LM: `lm.arpa` (order 3, built from the training transcripts)",
                 "- Lexicon: none", "- LM weight 0.5, word score 1 (tuned on dev over 30 grid points)",
                 "- beam+lm(order 3): CTC beam search, beam size 50, beam threshold 25"):
        assert f"\n{line}" in text, line
    # the data table: a header, its rule and a row per split, numbers as the dataset inputs hold them
    assert "| split | folder | utterances | audio | speakers | digest |\n| --- | --- | --- | --- | --- | --- |\n" \
           "| train | `LibriSpeech/train-clean-100` | 28539 | 100.6 h | 251 | `0123456789abcdef` |\n" \
           "| dev | `LibriSpeech/dev-clean` | 2703 | 5.4 h | 40 | `fedcba9876543210` |\n" \
           "| test | `LibriSpeech/test-clean` | 13 | 1.6 min | 2 | `00000000ffffffff` |\n" in text
    assert "| decoder | dev WER | dev CER | test WER | test CER |\n| --- | --- | --- | --- | --- |\n" \
           "| greedy | 0.4000 | 0.1500 | 0.5000 | 0.2500 |\n" \
           "| beam+lm(order 3) (served) | 0.3123 | 0.1200 | 0.4213 | 0.2000 |\n" in text
    validate, transcribe, serve = fenced(text)
    assert validate == ("asr validate --registered_model SpeechRecognitionModel --model_version 7 "
                        "--file_id 1089-134686-0000 --dataset data/LibriSpeech/test-clean")
    assert transcribe == ("asr transcribe --model_uri models:/SpeechRecognitionModel/7 "
                          "data/LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac")
    assert serve.startswith("mlflow models serve -m models:/SpeechRecognitionModel/7 --env-manager local "
                            "--port 5001\ncurl -s localhost:5001/invocations")


def test_a_greedy_model_without_a_test_split_says_so():
    text = render(card(decoder="greedy", decode=DecodeConfig(), lm_order=None, grid_points=0, test={},
                       training=replace(card().training, epochs=12, seconds=65, device="cpu", world=1, threads=1)))
    assert "served with greedy decoding: dev (no test split) WER 0.3123, CER 0.1200." in text
    assert "| decoder | dev WER | dev CER |\n| --- | --- | --- |\n| greedy (served) | 0.3123 | 0.1200 |\n" in text
    assert "- Greedy (best path per frame), no LM" in text and "LM weight" not in text
    assert "- Epochs: 12 of 12 (best: epoch 6)\n" in text and "- Wall time: 1 min 5 s" in text
    assert "x 1, bfloat16, 1 thread\n" in text


def test_the_lineage_names_the_parent_its_checkpoint_and_the_frozen_blocks():
    assert "\n- Lineage: trained from random weights\n" in render(card())
    tuned = replace(card().training, parent="SpeechRecognitionModel/1", parent_sha256="0123456789abcdef" * 4)
    text = render(card(training=replace(tuned, frozen=("stem", "cnn"))))
    assert ("\n- Lineage: fine-tuned from `SpeechRecognitionModel/1` (checkpoint sha256 `0123456789ab`), frozen "
            "blocks: stem, cnn\n") in text
    assert ", every block trained\n" in render(card(training=tuned))


def test_a_model_of_another_language_says_so():
    text = render(card(language="es", vocabulary=36))
    assert "-parameter DeepSpeech2-style CTC model of es text (36 classes), served with" in text
    assert "- Output: 36 classes per frame (letters, space and the CTC blank)" in text
    assert "model of English letters" in render(card()) and "space, apostrophe and" in render(card())


def test_the_cards_commands_parse_and_its_curl_sends_the_files_base64(tmp_path: Path):
    """The validate and transcribe lines are the CLI's own options (click parses them); the curl line, run by a real
    shell, sends JSON whose audio is the example file's bytes base64, even from a folder with a space in its name."""
    audio = tmp_path / "my corpus" / "1089-134686-0000.flac"
    audio.parent.mkdir()
    audio.write_bytes(b"fLaC\x00\x01not really audio")
    text = render(card(example=Example("1089-134686-0000", str(audio.parent), str(audio))))
    validate, transcribe, serve = fenced(text)
    for line in (validate, transcribe):
        args = subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True,
                              check=True).stdout.splitlines()  # the words the shell would pass
        assert args[:2] in (["asr", "validate"], ["asr", "transcribe"]) and str(audio.parent) in args[-1]
        ctx = cli.commands[args[1]].make_context(args[1], args[2:])
        assert ctx.params.get("model_version", "7") == "7"
    curl = serve.split("\n", 1)[1]
    shown = subprocess.run(["bash", "-c", f"curl() {{ printf '%s\\n' \"$@\"; }}\n{curl}"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    body = json.loads(shown[-1])
    assert base64.b64decode(body["dataframe_records"][0]["audio"]) == audio.read_bytes()


# ---------------------------------------------------------------- a real trained and registered model


def test_the_registered_version_carries_its_card(trained_lm, tmp_path: Path):
    cfg, run_id = trained_lm.cfg, trained_lm.result.run_id
    with mlflow_store(trained_lm.root):
        client = MlflowClient()
        version = client.get_model_version(MODEL_NAME, "1")
        run = client.get_run(run_id)
        artifact = mlflow.artifacts.load_text(f"runs:/{run_id}/model_card.md")
    text = version.description
    assert text == artifact and text.startswith(f"**{MODEL_NAME} version 1**")
    assert f"test WER {version.tags['test_wer']}" in text and f"CER {version.tags['test_cer']}" in text
    assert "| beam+lm(order 3) (served) |" in text and f"- Run: `{run_id}`" in text
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in run.inputs.dataset_inputs}
    for split, context, dirs in (("train", "training", cfg.data.train_data), ("dev", "validation", cfg.data.dev_data),
                                 ("test", "test", cfg.data.test_data)):
        utterances = read_splits(dirs)  # every utterance of these small splits is used
        speakers = len({u.file_id.split("-")[0] for u in utterances})
        dataset = inputs[context]
        assert f"| {split} | `{dataset.name}` | {len(utterances)} | " in text
        assert f" | {speakers} | `{dataset.digest}` |" in text, split
    assert f"| `{inputs['validation'].digest}` |" in text  # the dev digest the run logged
    validate, transcribe, serve = fenced(text)
    assert f"--registered_model {MODEL_NAME} --model_version 1 --file_id " in validate
    assert f"asr transcribe --model_uri models:/{MODEL_NAME}/1 " in transcribe
    assert f"mlflow models serve -m models:/{MODEL_NAME}/1 --env-manager local" in serve
    # the validate line works as it stands: it transcribes an utterance of the test split with version 1
    proc = run_cli(["bash", "-c", validate.replace("asr", " ".join(asr_command()), 1)], cwd=trained_lm.root,
                   tracking_uri=trained_lm.uri, threads=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"models:/{MODEL_NAME}/1" in proc.stdout and "WER " in proc.stdout
    assert validate.split("--file_id ")[1].split()[0] in proc.stdout


@pytest.mark.slow  # two training processes
def test_a_run_killed_right_after_registering_sets_its_card_on_resume(tiny_config, tmp_path: Path,
                                                                      empty_store_db: Path):
    uri = new_store(empty_store_db, tmp_path / "store")
    args = asr_command() + ["train"] + tiny_args(tiny_config(output_dir=str(tmp_path / "out")))
    env = subprocess_env(uri) | {"ASR_KILL_AT": "registered", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(args, cwd=tmp_path / "store", env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = MlflowClient(uri)
    assert not client.get_model_version(MODEL_NAME, "1").description  # registered, card not yet set
    last = only_run_dir(tmp_path / "out") / ckpt.LAST
    before = torch.load(last, weights_only=True)["progress"]["seconds"]  # the killed part's wall time
    resumed = run_cli(asr_command() + ["train", "--resume", "latest", "--output_dir", str(tmp_path / "out")],
                      cwd=tmp_path / "store", tracking_uri=uri, threads=1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    text = versions[0].description
    assert text.startswith(f"**{MODEL_NAME} version 1**") and "dev (no test split) WER" in text
    assert "| greedy (served) |" in text and "--model_version 1 " in text
    assert torch.load(last, weights_only=True)["progress"]["seconds"] > before > 0  # both parts counted
