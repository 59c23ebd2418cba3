"""The character vocabulary and transcript normalization that CTC training and decoding share."""

from __future__ import annotations

import string

import pytest

from asr.text import BLANK, VOCAB, decode, encode, normalize


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
    ("room 101", "room", 3),                                 # digits are dropped and counted
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
