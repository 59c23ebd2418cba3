"""Transcripts in any alphabet, end to end: numbers spelled out and counted by a real training run (English), a
vocabulary learned from Spanish transcripts that survives training, the registry, serving, decoding and export,
English for checkpoints that store no vocabulary, and one-line errors for text settings that cannot work."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from conftest import (
    asr_command,
    make_tiny_config,
    mlflow_store,
    new_store,
    one_line_error,
    relabelled_split,
    run_cli,
    run_cli_here,
)
from mlflow import MlflowClient

from asr.checkpoint import CheckpointError, load_recognizer, model_state, save_checkpoint
from asr.config import ConfigError, DecodeConfig, from_dict
from asr.decoding import BeamSearchDecoder, DecoderError, greedy_decode, make_decoder
from asr.export import export_model, read_metadata
from asr.lm import build_arpa, write_lexicon
from asr.loading import load_acoustic_model, load_pyfunc, load_transcriber
from asr.model import SpeechModel
from asr.settings import TrainConfig
from asr.text import ENGLISH_TEXT, TextNormalizer
from asr.training.batches import run_text
from asr.training.train import train
from asr.vocabulary import ENGLISH, VocabularyError

pytestmark = pytest.mark.slow  # tiny trainings on real audio


def artifact(run_id: str, name: str) -> dict:
    return mlflow.artifacts.load_dict(f"{MlflowClient().get_run(run_id).info.artifact_uri}/{name}")


def predictions(run_id: str) -> dict[str, str]:
    """file id -> target of the run's dev predictions table (the references, normalized as the labels were)."""
    run = MlflowClient().get_run(run_id)
    table = MlflowClient().load_table(run.info.experiment_id, "predictions_dev.json", run_ids=[run_id])
    return dict(zip(table["file_id"], table["target"], strict=True))


def test_a_number_trains_spelled_out_and_is_counted(short_dev: Path, tmp_path: Path, isolated_mlflow: str):
    """Acceptance: a transcript holding "42" trains as "forty two" under English normalization; the run logs how
    many numbers were spelled out and what was dropped, as metrics and per character in text_normalization.json."""
    split = relabelled_split(tmp_path / "numbers", short_dev, ["THE ANSWER IS 42!", "ROOM 7 ON THE 3RD FLOOR"])
    result = train(make_tiny_config(split, output_dir=str(tmp_path / "out")), progress=False)
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["text_numbers_spelled"] == 3 and metrics["text_chars_dropped"] == 1  # the "!"
    logged = artifact(result.run_id, "text_normalization.json")
    train_counts = logged["splits"]["train"]
    assert train_counts["numbers_spelled"] == {"count": 3, "examples": {"42": "forty two", "7": "seven",
                                                                        "3RD": "third"}}
    assert train_counts["chars_dropped"] == {"!": 1} and logged["language"] == "en"
    assert logged["vocabulary"]["symbols"] == list(ENGLISH.symbols) and logged["vocabulary"]["source"] == "english"
    targets = sorted(predictions(result.run_id).values())
    assert targets == ["room seven on the third floor", "the answer is forty two"]
    _, _, text = load_recognizer(tmp_path / "out" / result.run_id / "model.pt")
    assert text == ENGLISH_TEXT and text.vocabulary.decode(text.labels("THE ANSWER IS 42!")) == \
        "the answer is forty two"


SPANISH = ["EL NIÑO COMIÓ PIÑA POR LA MAÑANA", "¿DÓNDE ESTÁ EL ÁRBOL?", "ÉL TENÍA 42 AÑOS", "UNA CIGÜEÑA EN ESPAÑA"]
SPANISH_LETTERS = {"ñ", "ó", "á", "í", "é", "ü"}


@pytest.fixture(scope="module")
def spanish_run(tmp_path_factory: pytest.TempPathFactory, short_dev: Path, empty_store_db: Path):
    """A tiny model trained and registered on Spanish transcripts (--language es: --vocab auto by default), in its
    own store."""
    root = tmp_path_factory.mktemp("spanish")
    split = relabelled_split(root / "es", short_dev, SPANISH)
    new_store(empty_store_db, root)
    cfg = make_tiny_config(split, max_utterances=4, language="es", vocab_min_count=1,
                           output_dir=str(root / "outputs"), registered_model="asr-es")
    with mlflow_store(root):
        result = train(cfg, progress=False)
    return root, split, result


def test_a_vocabulary_learned_from_spanish_survives_training_and_loading(spanish_run):
    root, _, result = spanish_run
    with mlflow_store(root):
        vocab = artifact(result.run_id, "vocab.json")["vocab"]
        assert SPANISH_LETTERS <= set(vocab) and vocab[:2] == ["<blank>", " "]
        logged = artifact(result.run_id, "text_normalization.json")
        assert logged["language"] == "es" and logged["splits"]["train"]["numbers_spelled"]["examples"] == {
            "42": "cuarenta y dos"}
        assert logged["splits"]["train"]["chars_dropped"] == {"¿": 1, "?": 1}
        assert sorted(predictions(result.run_id).values())[0] == "dónde está el árbol"
        params = MlflowClient().get_run(result.run_id).data.params
        assert (params["vocab"], params["language"]) == ("auto", "es")
        card = MlflowClient().get_model_version("asr-es", "1").description
        assert "es text" in card
        served = load_pyfunc("models:/asr-es/1").unwrap_python_model().transcriber  # the registered pyfunc
    checkpoint = root / "outputs" / result.run_id / "model.pt"
    _, model, text = load_recognizer(checkpoint)
    assert list(text.vocabulary.symbols) == vocab and (text.language, text.lowercase) == ("es", True)
    assert model.classifier[-1].out_features == len(vocab)  # the output layer follows the vocabulary
    assert served.text == text and load_transcriber(str(checkpoint)).text == text
    wave = torch.zeros(16000)
    assert set(served.transcribe([wave])[0]) <= text.vocabulary.characters


def test_spanish_letters_decode_greedy_and_with_a_spanish_lexicon(tmp_path: Path):
    text, _ = TextNormalizer.from_transcripts(SPANISH, min_count=1, language="es")
    ids = [text.vocabulary.index(ch) for ch in "niño año"]
    log_probs = torch.full((1, len(ids), len(text.vocabulary)), -10.0)
    log_probs[0, torch.arange(len(ids)), ids] = 0.0
    lengths = torch.tensor([len(ids)])
    assert greedy_decode(log_probs, lengths, text.vocabulary) == ["niño año"]
    assert make_decoder(DecodeConfig(), text)(log_probs, lengths) == ["niño año"]
    lexicon, arpa = tmp_path / "lexicon.txt", tmp_path / "lm.arpa"
    assert write_lexicon(["niño", "AÑO", "42", "piña"], lexicon, text) == 3  # 42 is two words: not spelled
    assert "niño\tn i ñ o |" in lexicon.read_text(encoding="utf-8")
    build_arpa((text.normalized(t) for t in SPANISH + ["el niño y el año"]), 2, arpa)
    beam = BeamSearchDecoder(DecodeConfig(decoder="beam", lm=str(arpa), lm_weight=0.5), text)  # LM's own words
    assert beam(log_probs, lengths) == ["niño año"]
    # an English model cannot spell the Spanish lexicon
    with pytest.raises(DecoderError, match="'niño' is spelled with 'ñ', which this model cannot emit"):
        make_decoder(DecodeConfig(lexicon=str(lexicon)), ENGLISH_TEXT)


def test_exports_carry_the_models_vocabulary(spanish_run, tmp_path: Path):
    root, _, result = spanish_run
    recognizer, model, own, text = load_acoustic_model(str(root / "outputs" / result.run_id / "model.pt"))
    for fmt in ("torchscript", "onnx"):
        meta = read_metadata(export_model(model, fmt, f"{tmp_path / fmt}/", config=recognizer, decode=own,
                                          text=text), fmt)
        assert meta["vocabulary"] == list(text.vocabulary.symbols) and SPANISH_LETTERS <= set(meta["vocabulary"])
        assert meta["vocabulary"][meta["word_boundary"]] == " " and meta["language"] == "es"


def test_a_checkpoint_without_a_stored_vocabulary_loads_as_english(tmp_path: Path):
    cfg = make_tiny_config(tmp_path).recognizer()
    state = model_state(cfg, SpeechModel.from_config(cfg, len(ENGLISH)))
    del state["vocab"], state["text"]  # as checkpoints were written before vocabularies were stored
    torch.save(state, tmp_path / "old.pt")
    _, model, text = load_recognizer(tmp_path / "old.pt")
    assert text == ENGLISH_TEXT and model.classifier[-1].out_features == 29
    spanish, _ = TextNormalizer.from_transcripts(SPANISH, min_count=1, language="es")
    save_checkpoint(tmp_path / "mismatch.pt", cfg, SpeechModel.from_config(cfg, len(ENGLISH)), spanish)
    with pytest.raises(CheckpointError, match="do not fit its settings and .*-symbol vocabulary"):
        load_recognizer(tmp_path / "mismatch.pt")


def test_a_resumed_run_keeps_the_vocabulary_its_weights_were_trained_with(tmp_path: Path):
    spanish, _ = TextNormalizer.from_transcripts(SPANISH, min_count=1, language="es")
    cfg = make_tiny_config(tmp_path)  # --vocab english, --language en
    state = model_state(cfg.recognizer(), SpeechModel.from_config(cfg.recognizer(), len(spanish.vocabulary)), spanish)
    resumed = run_text(cfg, state)
    assert resumed.normalizer == spanish and resumed.source == "resumed run"
    assert run_text(cfg).normalizer == ENGLISH_TEXT


def test_the_vocabulary_defaults_to_english_for_english_and_to_learned_for_any_other_language(tmp_path: Path):
    base = {"train_data": str(tmp_path), "dev_data": str(tmp_path), "test_data": ""}
    assert from_dict(TrainConfig, base).text.vocab == "english"
    assert from_dict(TrainConfig, {**base, "language": "de"}).text.vocab == "auto"
    assert from_dict(TrainConfig, {**base, "language": "de", "vocab": "english"}).text.vocab == "english"
    assert from_dict(TrainConfig, {**base, "vocab": "auto"}).text.vocab == "auto"


def test_text_settings_that_cannot_work_are_refused_before_any_data_is_read(tmp_path: Path, isolated_mlflow: str):
    experiments = [e.name for e in MlflowClient().search_experiments()]
    base = {"train_data": str(tmp_path / "nowhere"), "dev_data": str(tmp_path), "test_data": ""}
    with pytest.raises(ConfigError, match="--language 'xx': num2words cannot spell numbers in it; it knows am, .*es"):
        from_dict(TrainConfig, {**base, "language": "xx"})
    with pytest.raises(ConfigError, match="--lowercase false keeps capitals, which the english vocabulary has none"):
        from_dict(TrainConfig, {**base, "lowercase": False})
    with pytest.raises(ConfigError, match="--vocab_min_count must be at least 1"):
        from_dict(TrainConfig, {**base, "vocab_min_count": 0})
    (tmp_path / "split").mkdir()
    bad = tmp_path / "chars.txt"
    bad.write_text("a\nab\n", encoding="utf-8")
    for vocab, message in ((str(tmp_path / "nope.txt"), "no such file"), (str(bad), "line 2: 'ab' is not one")):
        cfg = make_tiny_config(tmp_path / "split", vocab=vocab, output_dir=str(tmp_path / "out"))
        with pytest.raises(VocabularyError, match=message):
            train(cfg, progress=False)
    assert [e.name for e in MlflowClient().search_experiments()] == experiments  # no store was set up


def test_a_vocab_file_fixes_the_vocabulary(short_dev: Path, tmp_path: Path, isolated_mlflow: str):
    """--vocab FILE: a run's vocab.json (or one character per line) fixes the vocabulary whatever the data holds."""
    split = relabelled_split(tmp_path / "es", short_dev, SPANISH[:2])
    chars = tmp_path / "chars.txt"
    chars.write_text("\n".join("abcdefghijklmnopqrstuvwxyzñáéíóú") + "\n", encoding="utf-8")
    result = train(make_tiny_config(split, vocab=str(chars), language="es", output_dir=str(tmp_path / "out")),
                   progress=False)
    _, _, text = load_recognizer(tmp_path / "out" / result.run_id / "model.pt")
    assert text.vocabulary.symbols == ("<blank>", " ", *"abcdefghijklmnopqrstuvwxyzñáéíóú")
    assert artifact(result.run_id, "vocab.json") == text.vocabulary.to_json()


@pytest.mark.parametrize("args, message", [
    (["--language", "xx"], "Error: --language 'xx': num2words cannot spell numbers in it; it knows am, ar,"),
    (["--vocab", "nope.txt"], "Error: --vocab nope.txt: no such file (give english, auto, or a file of characters)"),
])
def test_bad_text_options_are_one_line_on_the_command_line(tmp_path: Path, short_dev: Path, args, message):
    command = ["train", "--train_data", str(short_dev), "--dev_data", str(short_dev), "--test_data", "", *args]
    # --language as a real `asr` process, --vocab in this one (seconds of start-up saved)
    proc = run_cli(asr_command() + command, cwd=tmp_path) if "--language" in args else run_cli_here(command, tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert proc.stderr.startswith(message) and not (tmp_path / "mlflow.db").exists()
