"""Character vocabulary: transcripts <-> label ids for CTC.

The blank is defined here once (index 0) and every other module takes it from here.
"""

from __future__ import annotations

import re
import unicodedata

BLANK = 0
VOCAB: tuple[str, ...] = ("<blank>", " ", "'", *"abcdefghijklmnopqrstuvwxyz")
_INDEX = {ch: i for i, ch in enumerate(VOCAB) if i != BLANK}
# Typographic apostrophes become the plain one; everything else outside the vocabulary is dropped.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> tuple[str, int]:
    """Lower-cases and strips accents; returns the text in vocabulary characters and how many were dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _SPACES.sub(" ", text.replace("-", " ")).strip()
    kept = "".join(ch for ch in text if ch in _INDEX)
    dropped = len(text) - len(kept)
    return _SPACES.sub(" ", kept).strip(), dropped


def normalized(text: str) -> str:
    """The text in vocabulary characters: normalize() without the count (references, labels, LM sentences)."""
    return normalize(text)[0]


def encode(text: str) -> list[int]:
    """Label ids of an already normalized text."""
    return [_INDEX[ch] for ch in text]


def decode(ids: list[int]) -> str:
    """Text of label ids (blanks are skipped)."""
    return "".join(VOCAB[i] for i in ids if i != BLANK)
