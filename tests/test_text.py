"""The character vocabulary and transcript normalization that CTC training and decoding share."""

from __future__ import annotations

import string

import pytest

from asr.text import (
    BLANK,
    ENGLISH_TEXT,
    VOCAB,
    TextCounts,
    TextNormalizer,
    decode,
    encode,
    normalize,
    spell_number,
)
from asr.vocabulary import ENGLISH


def test_vocabulary_is_blank_space_apostrophe_and_lowercase_letters():
    assert BLANK == 0
    assert VOCAB[BLANK] == "<blank>"
    assert len(VOCAB) == len(set(VOCAB)) == 29
    assert set(VOCAB) - {VOCAB[BLANK]} == set(string.ascii_lowercase) | {" ", "'"}
    # every real symbol is one character, so decode() can simply join them
    assert all(len(ch) == 1 for i, ch in enumerate(VOCAB) if i != BLANK)


def test_blank_is_not_a_character():
    everything = " '" + string.ascii_lowercase
    ids = encode(everything)
    assert BLANK not in ids
    assert sorted(ids) == list(range(1, len(VOCAB)))
    # the blank's name is not text: decoding it yields nothing, and it cannot be encoded
    assert decode([BLANK, BLANK]) == ""
    assert decode([BLANK] + encode("ab") + [BLANK] + encode("c")) == "abc"
    with pytest.raises(KeyError):
        encode("<")


@pytest.mark.parametrize("raw", [
    "HE HOPED THERE WOULD BE STEW FOR DINNER",
    "don't stop",
    "'tis the season",
    "a",
    "",
])
def test_encode_decode_round_trip(raw):
    text, dropped = normalize(raw)
    assert dropped == 0
    ids = encode(text)
    assert len(ids) == len(text)
    assert all(0 < i < len(VOCAB) for i in ids)
    assert decode(ids) == text


@pytest.mark.parametrize("raw, expected, dropped", [
    ("HELLO World", "hello world", 0),                       # case
    ("Café naïve ÉLAN", "cafe naive elan", 0),               # accents are stripped, not dropped
    ("\ufb01ne", "fine", 0),                                 # compatibility forms (the fi ligature)
    ("don\u2019t \u2018x\u2019 `y`", "don't 'x' 'y'", 0),  # typographic apostrophes -> '
    ("Hello, world!", "hello world", 2),                     # punctuation is dropped and counted
    ("room 101", "room one hundred and one", 0),             # numbers are spelled out (num2words)
    ("room #101", "room one hundred and one", 1),            # and what is left outside the vocabulary dropped
    ("\u201cquoted\u201d", "quoted", 2),                     # typographic double quotes are not apostrophes
    ("well-known", "well known", 0),                         # hyphens separate words
    ("  a \t b\n\n c  ", "a b c", 0),                        # whitespace runs collapse, ends are stripped
    ("x\u00a0y", "x y", 0),                                  # no-break space is a space
    ("a , b", "a b", 1),                                     # dropping a word leaves one space, not two
    ("?!", "", 2),
])
def test_normalize(raw, expected, dropped):
    assert normalize(raw) == (expected, dropped)


def test_normalize_output_is_always_encodable_and_stable():
    raw = "Æsop\u2019s «Fables», 3rd ed. \u2014 Résumé\tnaïve  co\u00f6perate"
    text, dropped = normalize(raw)
    assert dropped > 0
    assert set(text) <= set(VOCAB[1:])
    assert "  " not in text and text == text.strip()
    assert decode(encode(text)) == text
    assert normalize(text) == (text, 0)  # idempotent


@pytest.mark.parametrize("raw, expected", [
    ("THE ANSWER IS 42", "the answer is forty two"),          # acceptance: 42 trains as forty two
    ("the 21st of May", "the twenty first of may"),           # ordinals as num2words spells them
    ("1,000 people", "one thousand people"),                  # thousands separators
    ("pi is 3.14.", "pi is three point one four"),            # decimals; the sentence's full stop is dropped
    ("mp3 files", "mp three files"),                          # digits inside a word
    ("10:30", "ten thirty"),                                  # a colon separates two numbers
])
def test_english_numbers_are_spelled_out(raw, expected):
    assert ENGLISH_TEXT.normalized(raw) == expected


@pytest.mark.parametrize("written, language, ordinal, expected", [
    ("42", "es", False, "cuarenta y dos"),
    ("1.000", "es", False, "mil"),                            # Spanish groups thousands with a full stop...
    ("3,5", "es", False, "tres punto cinco"),                 # ...and writes decimals with a comma
    ("2", "es", True, "segundo"),
    ("42", "de", False, "zweiundvierzig"),
    ("21", "fr", False, "vingt et un"),
    ("1,5", "en", False, "one five"),                         # not one English number: spelled in parts
    ("9" * 400, "en", False, " ".join(["nine"] * 400)),       # beyond num2words: digit by digit
])
def test_spell_number_per_language(written, language, ordinal, expected):
    assert spell_number(written, language, ordinal) == expected


def test_counts_say_what_normalization_changed():
    counts = TextCounts()
    assert ENGLISH_TEXT.normalize("CAFÉ 42, “QUOTED” 7TH!", counts) == ("cafe forty two quoted seventh", 4)
    assert counts.numbers_spelled == 2 and counts.examples == {"42": "forty two", "7TH": "seventh"}
    assert counts.folded == {"é": 1} and counts.dropped == {",": 1, "\u201c": 1, "\u201d": 1, "!": 1}
    assert counts.metrics() == {"text_numbers_spelled": 2.0, "text_chars_folded": 1.0, "text_chars_dropped": 4.0}
    ENGLISH_TEXT.normalize("a, b", counts)  # counts add up over transcripts
    assert counts.dropped[","] == 2 and counts.to_json()["chars_dropped"] == {",": 2, "\u201c": 1, "\u201d": 1,
                                                                             "!": 1}


SPANISH = ["El niño comió PIÑA por la mañana", "¿Dónde está el árbol? Tenía 42 años.", "Una cigüeña"]


def test_a_vocabulary_learned_from_spanish_keeps_its_letters():
    text, rare = TextNormalizer.from_transcripts(SPANISH, min_count=1, language="es")
    letters = text.vocabulary.letters
    assert {"ñ", "ó", "á", "í", "ü"} <= letters and not letters & {"¿", "?", ".", "4", "2", "N"}
    assert text.vocabulary.symbols[:2] == ("<blank>", " ") and rare == {}
    assert list(text.vocabulary.symbols[2:]) == sorted(letters)  # no apostrophe here: the rest by code point
    assert text.normalize(SPANISH[1]) == ("dónde está el árbol tenía cuarenta y dos años", 3)  # ¿ ? .
    assert text.vocabulary.decode(text.labels(SPANISH[0])) == "el niño comió piña por la mañana"


def test_characters_seen_too_seldom_are_reported_and_dropped_not_learned():
    text, rare = TextNormalizer.from_transcripts(SPANISH, min_count=2, language="es")
    assert rare == {"b": 1, "g": 1, "y": 1, "í": 1, "ü": 1}  # árbol, cigüeña, y, tenía
    assert {"ñ", "ó", "á"} <= text.vocabulary.letters  # niño piña mañana años cigüeña, comió dónde, está árbol
    counts = TextCounts()  # ü is folded to the u the vocabulary has, g (no such letter) dropped
    assert text.normalize("Cigüeña", counts) == ("ciueña", 1) and counts.dropped == {"g": 1}
    assert counts.folded == {"ü": 1}


def test_english_transcripts_learn_the_english_vocabulary():
    pangram = "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG'S BACK"
    text, rare = TextNormalizer.from_transcripts([pangram], min_count=1)
    assert text.vocabulary == ENGLISH and rare == {}


def test_capitals_are_kept_without_lowercasing():
    text, _ = TextNormalizer.from_transcripts(["Ana y Él"], min_count=1, lowercase=False, language="es")
    assert {"A", "É", "a", "l"} <= text.vocabulary.letters and text.normalized("Ana y Él") == "Ana y Él"


def test_normalizer_json_round_trip():
    text, _ = TextNormalizer.from_transcripts(SPANISH, min_count=1, lowercase=False, language="es")
    assert TextNormalizer.from_json(text.to_json()) == text
    assert TextNormalizer.from_json({"vocab": list(VOCAB), "blank": 0}) == ENGLISH_TEXT  # no language: English
