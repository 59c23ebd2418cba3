"""Transcripts -> the text a model learns and is scored on, per language: numbers written with digits are spelled
out (num2words, in the model's language), typographic apostrophes become ', hyphens and white space become single
spaces, and each character outside the model's vocabulary is either folded to one inside it (an accent stripped
for an English model: é -> e; a compatibility form: the fi ligature -> fi) or dropped, every one counted
(`TextCounts`: what training logs as text_* metrics and text_normalization.json).

`TextNormalizer` is that normalization for one vocabulary, language and case rule: a model carries it (see
asr.checkpoint) and every place that makes labels, references, lexicons or LM text uses the model's. The module-level
names (VOCAB, BLANK, normalize, normalized, encode, decode) are the English default's, as before vocabularies
were stored.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

from asr.vocabulary import BLANK as BLANK  # the blank's index, for the modules that import it from here
from asr.vocabulary import ENGLISH, Vocabulary

VOCAB: tuple[str, ...] = ENGLISH.symbols
DEFAULT_LANGUAGE = "en"
# Typographic apostrophes become the plain one.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_SPACES = re.compile(r"\s+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_DIGIT = re.compile(r"\d")
# Ordinal suffixes num2words can spell (to="ordinal"), by language; German's "1." reads like a sentence's end.
ORDINAL_SUFFIXES = {"en": r"st|nd|rd|th", "es": r"º|ª|°", "it": r"º|ª|°", "pt": r"º|ª|°",
                    "fr": r"ères?|ers?|res?|èmes?|e"}
# Languages writing 3.5 for three and a half (and 1,000 for a thousand); the others write 3,5 and 1.000.
DECIMAL_POINT = frozenset({"en", "ja", "ko", "th", "he", "kn", "te", "bn", "am"})
EXAMPLES_KEPT = 5  # numbers spelled, kept as examples per split


def num2words_languages() -> list[str]:
    """The language codes num2words spells numbers in (en, es, de, fr, ...)."""
    from num2words import CONVERTER_CLASSES

    return sorted(CONVERTER_CLASSES)


def language_problem(language: str) -> str | None:
    """Why numbers cannot be spelled in `language`, or None."""
    languages = num2words_languages()
    if language in languages:
        return None
    return f"num2words cannot spell numbers in it; it knows {', '.join(languages)}"


@dataclass
class TextCounts:
    """What normalization changed in a split's transcripts: numbers spelled out (with a few examples), and the
    characters outside the vocabulary that were folded into it or dropped, per character."""
    numbers_spelled: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # number as written -> as spelled
    folded: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def metrics(self, prefix: str = "text_") -> dict[str, float]:
        """text_numbers_spelled, text_chars_folded, text_chars_dropped: MLflow metrics of the totals."""
        return {f"{prefix}numbers_spelled": float(self.numbers_spelled),
                f"{prefix}chars_folded": float(sum(self.folded.values())),
                f"{prefix}chars_dropped": float(sum(self.dropped.values()))}

    def to_json(self) -> dict[str, Any]:
        """Counts per character, most frequent first, and the examples."""
        return {"numbers_spelled": {"count": self.numbers_spelled, "examples": self.examples},
                "chars_folded": dict(self.folded.most_common()), "chars_dropped": dict(self.dropped.most_common())}

    def summary(self) -> str:
        """One line: the totals and the most frequent dropped characters."""
        dropped = ", ".join(f"{ch!r} x{n}" for ch, n in self.dropped.most_common(8))
        return (f"{self.numbers_spelled} numbers spelled out, {sum(self.folded.values())} characters folded into "
                f"the vocabulary, {sum(self.dropped.values())} dropped" + (f" ({dropped})" if dropped else ""))


@dataclass(frozen=True)
class TextNormalizer:
    """Normalization into `vocabulary` for `language` (num2words' code: numbers are spelled in it) with or without
    lower-casing; a trained model carries one (asr.checkpoint) and decodes, scores and spells lexicons with it."""
    vocabulary: Vocabulary = ENGLISH
    language: str = DEFAULT_LANGUAGE
    lowercase: bool = True

    def normalize(self, text: str, counts: TextCounts | None = None) -> tuple[str, int]:
        """The text in vocabulary characters and how many characters were dropped; `counts`, when given, adds
        what was spelled, folded and dropped."""
        text = self._canonical(text, counts)
        outside = set(text) - self.vocabulary.characters
        if not outside:
            return text, 0
        dropped = 0
        for ch in outside:
            n = text.count(ch)
            if self._folds[ch] is None:
                dropped += n
                if counts is not None:
                    counts.dropped[ch] += n
            elif counts is not None:
                counts.folded[ch] += n
        text = text.translate({ord(ch): self._folds[ch] for ch in outside})
        return _SPACES.sub(" ", text).strip(), dropped

    def normalized(self, text: str) -> str:
        """The text in vocabulary characters: normalize() without the count (references, labels, LM sentences)."""
        return self.normalize(text)[0]

    def labels(self, text: str, counts: TextCounts | None = None) -> list[int]:
        """Label ids of a raw transcript."""
        return self.vocabulary.encode(self.normalize(text, counts)[0])

    def to_json(self) -> dict[str, Any]:
        """The vocabulary's JSON with the language and case rule: what a checkpoint stores."""
        return {**self.vocabulary.to_json(), "language": self.language, "lowercase": self.lowercase}

    @classmethod
    def from_json(cls, value: dict[str, Any], where: str = "text settings") -> TextNormalizer:
        """From `to_json()` output; a missing language or case rule is the English default's."""
        return cls(Vocabulary.from_json(value, where), value.get("language", DEFAULT_LANGUAGE),
                   bool(value.get("lowercase", True)))

    @classmethod
    def from_transcripts(cls, texts: Iterable[str], min_count: int = 1, lowercase: bool = True,
                         language: str = DEFAULT_LANGUAGE) -> tuple[TextNormalizer, dict[str, int]]:
        """The normalizer whose vocabulary is learned from `texts` (after numbers are spelled, NFC and, with
        `lowercase`, lower-casing): letters, marks and the apostrophe seen at least `min_count` times (see
        Vocabulary.from_counts). Also returns the characters seen fewer times with their counts: reported, not
        learned (normalization folds them into the vocabulary where it can, ü -> u, else drops them)."""
        seen: Counter[str] = Counter()
        raw = cls(ENGLISH, language, lowercase)
        for text in texts:
            seen.update(raw._canonical(text))
        vocabulary, rare = Vocabulary.from_counts(seen, min_count)
        return cls(vocabulary, language, lowercase), rare

    def _canonical(self, text: str, counts: TextCounts | None = None) -> str:
        """The text before any character is folded or dropped: numbers spelled, apostrophes, case, NFC, hyphens and
        white space runs as single spaces."""
        text = self._spell_numbers(text.translate(_APOSTROPHES), counts)
        text = unicodedata.normalize("NFC", text.lower() if self.lowercase else text)
        return _SPACES.sub(" ", text.replace("-", " ")).strip()

    @cached_property
    def _folds(self) -> _Folds:
        return _Folds(self.vocabulary, self.lowercase)

    @cached_property
    def _numbers(self) -> re.Pattern:
        """A run of digits with its separators (group 1) and an ordinal suffix of the language (group 2)."""
        suffix = ORDINAL_SUFFIXES.get(self.language.split("_")[0])
        ordinal = rf"(?:({suffix})(?![^\W\d_]))?" if suffix else "()"
        return re.compile(rf"({_NUMBER.pattern}){ordinal}", re.IGNORECASE)

    def _spell_numbers(self, text: str, counts: TextCounts | None) -> str:
        """Every run of digits (with its separators, and an ordinal suffix of the language) spelled out."""
        if not _DIGIT.search(text):
            return text

        def spell(m: re.Match) -> str:
            spelled = spell_number(m.group(1), self.language, ordinal=bool(m.group(2)))
            if counts is not None:
                counts.numbers_spelled += 1
                if len(counts.examples) < EXAMPLES_KEPT:
                    counts.examples.setdefault(m.group(0), spelled)
            return f" {spelled} "

        return self._numbers.sub(spell, text)


class _Folds(dict):
    """Character -> what it becomes in the vocabulary: its compatibility decomposition without combining marks
    (é -> e, the fi ligature -> fi) when all of that is in the vocabulary, else None (dropped). Filled on use."""

    def __init__(self, vocabulary: Vocabulary, lowercase: bool):
        super().__init__()
        self.vocabulary, self.lowercase = vocabulary, lowercase

    def __missing__(self, ch: str) -> str | None:
        folded = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        folded = folded.lower() if self.lowercase else folded
        value = folded if folded and all(c in self.vocabulary for c in folded) else None
        self[ch] = value
        return value


def spell_number(written: str, language: str, ordinal: bool = False) -> str:
    """A number written with digits (and the language's separators: 1,000.5 in English, 1.000,5 in Spanish) in
    words, hyphens as spaces; digits num2words cannot read as one number are spelled in parts, a part too large
    for it digit by digit."""
    from num2words import num2words

    point = "." if language.split("_")[0] in DECIMAL_POINT else ","
    grouping = "," if point == "." else "."
    whole, _, fraction = written.rpartition(point) if written.count(point) == 1 else (written, "", "")
    groups = whole.split(grouping)
    if point not in whole and (len(groups) == 1 or len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
        number = int("".join(groups))
        values: list[Any] = [Decimal(f"{number}.{fraction}") if fraction else number]
    else:  # not one number in this language's way of writing them (1.2.3, 12,34 in English): part by part
        values = [int(p) for p in re.split(r"[.,]", written)]
    words = []
    for value in values:
        try:
            words.append(num2words(value, lang=language, to="ordinal" if ordinal and len(values) == 1 else
                                   "cardinal"))
        except (NotImplementedError, TypeError):  # no ordinals in this language (or of this value): the cardinal
            words.append(num2words(value, lang=language))
        except (OverflowError, ValueError, ArithmeticError):  # beyond num2words: digit by digit
            words.extend(num2words(int(d), lang=language) for d in str(value) if d.isdigit())
    return " ".join(re.sub(r"[-,]", " ", " ".join(words)).split())  # num2words writes forty-two, one thousand, two


ENGLISH_TEXT = TextNormalizer()


def normalize(text: str) -> tuple[str, int]:
    """The English default's normalization: the text in its characters and how many were dropped."""
    return ENGLISH_TEXT.normalize(text)


def normalized(text: str) -> str:
    """The English default's normalize() without the count (references, labels, LM sentences)."""
    return ENGLISH_TEXT.normalized(text)


def encode(text: str) -> list[int]:
    """Label ids of an already normalized text, in the English default's vocabulary."""
    return ENGLISH.encode(text)


def decode(ids: list[int]) -> str:
    """Text of label ids in the English default's vocabulary (blanks are skipped)."""
    return ENGLISH.decode(ids)


def not_utf8_at(line: bytes) -> str | None:
    """Where `line` stops being UTF-8 text, as " (byte 0xNN at column N)" (columns count bytes from 1), or None
    when it all decodes. A NUL byte counts as not text: UTF-8 allows it, but only binary files hold one."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return f" (byte 0x{line[e.start]:02x} at column {e.start + 1})"
    return f" (byte 0x00 at column {line.index(0) + 1})" if 0 in line else None
