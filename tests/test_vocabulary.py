"""The vocabulary a model emits: English default order, JSON round trip, files, and what is refused."""

from __future__ import annotations

import json

import pytest

from asr.text import VOCAB
from asr.vocabulary import BLANK, ENGLISH, Vocabulary, VocabularyError, read_vocabulary


def test_the_english_default_is_the_order_every_earlier_model_used():
    assert ENGLISH.symbols == VOCAB == ("<blank>", " ", "'", *"abcdefghijklmnopqrstuvwxyz")
    assert len(ENGLISH) == 29 and ENGLISH.word_boundary == 1 and ENGLISH.index("a") == 3
    assert ENGLISH.letters == frozenset("'abcdefghijklmnopqrstuvwxyz")
    assert ENGLISH.decode([BLANK, 3, BLANK, 1, 4]) == "a b" and ENGLISH.encode("a b") == [3, 1, 4]


def test_json_round_trip_keeps_order_and_non_ascii_letters():
    spanish = Vocabulary.of(["a", "b", "ñ", "é"])
    assert spanish.symbols == ("<blank>", " ", "a", "b", "ñ", "é")  # blank first, then the space
    assert spanish.to_json() == {"vocab": ["<blank>", " ", "a", "b", "ñ", "é"], "blank": 0}
    assert Vocabulary.from_json(json.loads(json.dumps(spanish.to_json()))) == spanish
    assert spanish.decode(spanish.encode("ñé a")) == "ñé a"
    with pytest.raises(KeyError):
        spanish.encode("z")


def test_from_counts_learns_letters_seen_often_enough_in_a_stable_order():
    vocabulary, rare = Vocabulary.from_counts({"b": 5, "a": 9, "'": 3, "ñ": 4, "ß": 1, ",": 50, "7": 9, " ": 99}, 3)
    assert vocabulary.symbols == ("<blank>", " ", "'", "a", "b", "ñ")  # punctuation and digits are never learned
    assert rare == {"ß": 1}


@pytest.mark.parametrize("content, name, expected", [
    ("a\nb\nñ\n", "chars.txt", ("<blank>", " ", "a", "b", "ñ")),
    ("a\n \n\nb\n", "chars.txt", ("<blank>", "a", " ", "b")),        # a line holding a space places the space
    ('["a", "ñ"]', "chars.json", ("<blank>", " ", "a", "ñ")),
    (json.dumps({"vocab": list(VOCAB), "blank": 0}), "vocab.json", VOCAB),  # a run's vocab.json artifact
])
def test_vocabulary_files(tmp_path, content, name, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_vocabulary(path).symbols == expected


@pytest.mark.parametrize("content, message", [
    ("a\nab\n", "line 2: 'ab' is not one character"),
    ("a\na\n", "'a' is listed twice"),
    ("a\n|\n", "'|' cannot be a symbol"),
    ("a\n\t\n", "'\\t' is white space"),
    ('{"vocab": ["a"], "blank": 3}', "the blank must be index 0"),
    ('{"vocab": "abc"}', "expected a list of characters"),
    ("[1, 2", "not valid JSON"),
    ("\n\n", "lists no characters"),
])
def test_bad_vocabulary_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VocabularyError, match=None) as e:
        read_vocabulary(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_vocabulary_file_says_what_to_give(tmp_path):
    with pytest.raises(VocabularyError, match="no such file .give english, auto, or a file of characters"):
        read_vocabulary(tmp_path / "nope.txt")


def test_vocab_auto_labels_the_training_transcripts_it_learned_from(short_dev, tmp_path):
    """--vocab auto reads the training transcripts once: the dataset is labelled from the reading the vocabulary was
    learned from, not from a second reading of the folders, which would also see a transcript changed in between
    (here a letter the vocabulary does not have, that the labels would silently drop)."""
    import torch
    from conftest import make_tiny_config, relabelled_split

    from asr.model import SpeechModel
    from asr.training.batches import run_text, training_data
    from asr.training.distributed import Context

    split = relabelled_split(tmp_path / "split", short_dev, ["UNA PIÑA", "EL NIÑO"])
    cfg = make_tiny_config(split, vocab="auto", language="es", vocab_min_count=1, feature_cache="memory")
    text = run_text(cfg)
    assert "ñ" in text.normalizer.vocabulary and "ü" not in text.normalizer.vocabulary
    for trans in split.rglob("*.trans.txt"):  # the corpus changes after the vocabulary was learned
        trans.write_text(trans.read_text(encoding="utf-8").replace("Ñ", "Ü"), encoding="utf-8")
    model = SpeechModel.from_config(cfg.recognizer(), len(text.normalizer.vocabulary))
    data = training_data(cfg, model, Context(0, 1, torch.device("cpu")), False, lambda _: None, text)
    assert sorted(u.transcript for u in data.train_set.utterances) == ["EL NIÑO", "UNA PIÑA"]
    labelled = sorted(text.normalizer.vocabulary.decode(labels) for labels in data.train_set.labels)
    assert labelled == ["el niño", "una piña"] and data.train_set.text_counts.metrics()["text_chars_dropped"] == 0
    assert data.text.normalizer == text.normalizer and data.text.train_reading is None  # not kept for the run
