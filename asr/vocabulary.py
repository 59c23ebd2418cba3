"""The characters a CTC model emits: an ordered vocabulary with the blank at index 0 and the word boundary (the
space) among them, label ids <-> text, and its JSON form (what a checkpoint, the run's vocab.json and every export
carry).

The English default (blank, space, apostrophe, a-z) is the order every model trained before vocabularies were
stored used, so a checkpoint without one is English. Other vocabularies are learned from training transcripts
(`from_counts`: letters, marks and the apostrophe seen often enough) or read from a file (`read_vocabulary`).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr import UserError

BLANK = 0
BLANK_NAME = "<blank>"
SPACE = " "
APOSTROPHE = "'"
# The beam search decoder's token names for the blank and the word boundary: no vocabulary may hold them.
RESERVED = ("-", "|")


class VocabularyError(UserError):
    """A vocabulary that cannot be used (a bad file, duplicate or multi-character symbols)."""


def learnable(ch: str) -> bool:
    """Whether a character may be part of a learned vocabulary: a letter (any script), a combining mark or the
    apostrophe. Digits are spelled out and punctuation is dropped before a transcript reaches the model."""
    return ch == APOSTROPHE or unicodedata.category(ch)[0] in "LM"


@dataclass(frozen=True)
class Vocabulary:
    """Ordered symbols: index 0 is the CTC blank (named "<blank>", never text), every other one a single character,
    the space (the word boundary) among them. Raises VocabularyError when built otherwise."""
    symbols: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _symbols_problem(self.symbols)
        if problem:
            raise VocabularyError(f"invalid vocabulary: {problem}")
        object.__setattr__(self, "_index", {ch: i for i, ch in enumerate(self.symbols) if i != BLANK})

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, ch: object) -> bool:
        return ch in self._index

    @property
    def characters(self) -> frozenset[str]:
        """Every character the model can emit (the space included)."""
        return frozenset(self._index)

    @property
    def letters(self) -> frozenset[str]:
        """What a word may be spelled with: every character but the space."""
        return self.characters - {SPACE}

    @property
    def word_boundary(self) -> int:
        return self._index[SPACE]

    def index(self, ch: str) -> int:
        return self._index[ch]

    def encode(self, text: str) -> list[int]:
        """Label ids of an already normalized text. Raises KeyError for a character outside the vocabulary."""
        return [self._index[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of label ids (blanks are skipped)."""
        return "".join(self.symbols[i] for i in ids if i != BLANK)

    def describe(self) -> str:
        """The letters in a few words, for messages: "a-z and '" for English, else the letters themselves."""
        if self == ENGLISH:
            return "a-z and '"
        return f"{len(self.letters)} letters: {''.join(sorted(self.letters))}"

    def to_json(self) -> dict[str, Any]:
        """{"vocab": [symbols], "blank": 0}: the run's vocab.json, and what `from_json` and `--vocab FILE` read."""
        return {"vocab": list(self.symbols), "blank": BLANK}

    @classmethod
    def from_json(cls, value: Any, where: str = "vocabulary") -> Vocabulary:
        """A vocabulary from `to_json()` output or a plain list of characters (the blank and the space are added
        when missing: blank first, space next). Raises VocabularyError naming `where` for anything else."""
        items = value.get("vocab") if isinstance(value, Mapping) else value
        if isinstance(value, Mapping) and value.get("blank", BLANK) != BLANK:
            raise VocabularyError(f"{where}: the blank must be index {BLANK}, not {value.get('blank')!r}")
        if not isinstance(items, Sequence) or isinstance(items, str) or not all(isinstance(s, str) for s in items):
            raise VocabularyError(f"{where}: expected a list of characters or {{\"vocab\": [...], \"blank\": 0}}")
        return cls.of(items, where)

    @classmethod
    def of(cls, items: Sequence[str], where: str = "vocabulary") -> Vocabulary:
        """The blank, then the space unless `items` place it, then `items` in their order (a leading "<blank>" in
        `items` is the blank itself). Raises VocabularyError naming `where`."""
        chars = list(items[1:] if items and items[0] == BLANK_NAME else items)
        if SPACE not in chars:
            chars.insert(0, SPACE)
        try:
            return cls((BLANK_NAME, *chars))
        except VocabularyError as e:
            raise VocabularyError(f"{where}: {str(e).removeprefix('invalid vocabulary: ')}") from None

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int) -> tuple[Vocabulary, dict[str, int]]:
        """The vocabulary of characters seen at least `min_count` times among those `learnable` (counts of other
        characters are ignored: they are dropped as text is normalized): blank, space, apostrophe (if learned),
        then the rest by code point, so the same counts always give the same order and English text gives the
        English vocabulary. Also returns the learnable characters seen fewer times, with their counts (reported,
        not learned)."""
        candidates = {ch: n for ch, n in counts.items() if ch != SPACE and len(ch) == 1 and learnable(ch)}
        learned = sorted((ch for ch, n in candidates.items() if n >= min_count), key=lambda ch: (ch != APOSTROPHE, ch))
        rare = {ch: n for ch, n in sorted(candidates.items()) if n < min_count}
        return cls((BLANK_NAME, SPACE, *learned)), rare


def _symbols_problem(symbols: tuple[str, ...]) -> str | None:
    """What makes `symbols` unusable as a vocabulary, or None."""
    if not symbols or symbols[BLANK] != BLANK_NAME:
        return f"the first symbol must be the blank {BLANK_NAME!r}"
    rest = symbols[1:]
    if bad := [s for s in rest if not isinstance(s, str) or len(s) != 1]:
        return f"every symbol but the blank is one character, not {bad[0]!r}"
    if dup := sorted({s for s in rest if rest.count(s) > 1}):
        return f"{dup[0]!r} is listed twice"
    if reserved := [s for s in rest if s in RESERVED]:
        return (f"{reserved[0]!r} cannot be a symbol: the beam search decoder names the blank and the word "
                "boundary with - and | (hyphens become spaces as transcripts are normalized)")
    if bad := [s for s in rest if s != SPACE and s.isspace()]:
        return f"{bad[0]!r} is white space: the space is the only word boundary"
    if SPACE not in rest:
        return "it has no space (the word boundary)"
    return None


ENGLISH = Vocabulary((BLANK_NAME, SPACE, APOSTROPHE, *"abcdefghijklmnopqrstuvwxyz"))


def read_vocabulary(path: str | Path) -> Vocabulary:
    """A vocabulary file: JSON (a list of characters, or a run's vocab.json) or text with one character per line
    (a line holding a single space is the space; empty lines are skipped). Raises VocabularyError in one line
    naming the file and, for text, the line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VocabularyError(f"--vocab {path}: no such file (give english, auto, or a file of characters)") \
            from None
    except (OSError, UnicodeDecodeError) as e:
        raise VocabularyError(f"--vocab {path}: cannot read it as UTF-8 text: {e}") from None
    if path.suffix == ".json" or raw.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise VocabularyError(f"--vocab {path}: not valid JSON ({e})") from None
        return Vocabulary.from_json(value, f"--vocab {path}")
    chars = []
    for number, line in enumerate(raw.splitlines(), 1):
        if line == "":
            continue
        if len(line) != 1:
            raise VocabularyError(f"--vocab {path} line {number}: {line!r} is not one character (one per line)")
        chars.append(line)
    if not chars:
        raise VocabularyError(f"--vocab {path} lists no characters")
    return Vocabulary.of(chars, f"--vocab {path}")
