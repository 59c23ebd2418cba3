"""What the synthetic speakers say: random sentences over the wordfreq English words that espeak reads as
written, drawn with flattened Zipf weights."""

from __future__ import annotations

import codecs
import re
from functools import lru_cache

import numpy as np

from asr.data.synth.espeak import Espeak, SynthError

VOCAB_SOURCE_SIZE = 6000  # top-N wordfreq words considered
ZIPF_FLATTEN = 0.5  # weight ~ rank^-0.5: common words stay common, the tail still gets sampled
MIN_WORDS, MAX_WORDS = 3, 20
# Profanity and slurs kept out of a demo corpus; rot13 so the source reads cleanly.
# fmt: off
_BLOCKED_STEMS = tuple(codecs.decode(w, "rot13") for w in (
    "shpx", "fuvg", "ovgpu", "avtt", "phag", "jube", "fyhg", "cbea", "ergneq"))
_BLOCKED = frozenset(codecs.decode(w, "rot13") for w in (
    "nff", "nffubyr", "qvpx", "pbpx", "chffl", "encr", "encrq", "encvfg", "penc", "cvff", "cvffrq", "qnza", "frkl",
    "gvgf", "obbof"))
# fmt: on
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _speakable(tts: Espeak, word: str) -> bool:
    """True if espeak reads `word` as written (not spelled out like "dna", not expanded like "mr")."""
    if word in ("a", "i"):
        return True
    if not _WORD.fullmatch(word) or not re.search("[aeiouy]", word):
        return False
    if word in _BLOCKED or any(stem in word for stem in _BLOCKED_STEMS):
        return False
    ipa = re.sub(r"[\sˈˌː]", "", tts.phonemes(word))
    spelled = re.sub(r"[\sˈˌː]", "", tts.phonemes(" ".join(word.replace("'", ""))))
    return ipa != spelled and len(ipa) < 2 * len(word)


@lru_cache(maxsize=1)
def vocabulary() -> tuple[tuple[str, ...], np.ndarray]:
    """Words (frequency order) and their sampling probabilities."""
    try:
        from wordfreq import top_n_list
    except ImportError:
        raise SynthError("word list unavailable; install it: pip install wordfreq==3.1.1") from None
    with Espeak() as tts:
        tts.set_voice("en-us")
        words = tuple(w for w in top_n_list("en", VOCAB_SOURCE_SIZE) if _speakable(tts, w))
    weights = np.arange(1, len(words) + 1, dtype=np.float64) ** -ZIPF_FLATTEN
    return words, weights / weights.sum()


def sample_sentence(rng: np.random.Generator) -> list[str]:
    """3-20 lower-case words drawn with flattened Zipf weights."""
    words, probs = vocabulary()
    n = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
    return [words[i] for i in rng.choice(len(words), size=n, p=probs)]


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` transcripts (LibriSpeech style, upper case) for a seed."""
    rng = np.random.default_rng(seed)
    return [" ".join(sample_sentence(rng)).upper() for _ in range(n)]
