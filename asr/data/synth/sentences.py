"""What the synthetic speakers say: random sentences over a language's wordfreq words that espeak reads as
written, drawn with flattened Zipf weights."""

from __future__ import annotations

import re
import unicodedata
from functools import cache

import numpy as np

from asr.data.synth.espeak import Espeak, SynthError
from asr.data.synth.languages import Language, language

VOCAB_SOURCE_SIZE = 6000  # top-N wordfreq words considered
ZIPF_FLATTEN = 0.5  # weight ~ rank^-0.5: common words stay common, the tail still gets sampled
MIN_WORDS, MAX_WORDS = 3, 20
_STRESS = re.compile(r"[\sˈˌː]")


def _speakable(tts: Espeak, word: str, lang: Language) -> bool:
    """True if `word` is the language's (its letters, not blocked) and espeak reads it as written (not spelled out
    like "dna", not expanded like "mr")."""
    if word in lang.one_letter_words:
        return True
    if not lang.word_pattern().fullmatch(word) or not re.search(f"[{lang.vowels}]", word):
        return False
    if lang.is_blocked(word):
        return False
    ipa = _STRESS.sub("", tts.phonemes(word))
    spelled = _STRESS.sub("", tts.phonemes(" ".join(word.replace("'", ""))))
    return ipa != spelled and len(ipa) < 2 * len(word)


@cache
def vocabulary(code: str = "en") -> tuple[tuple[str, ...], np.ndarray]:
    """A language's words (lower case NFC, frequency order) and their sampling probabilities."""
    lang = language(code)
    try:
        from wordfreq import top_n_list
    except ImportError:
        raise SynthError("word list unavailable; install it: pip install wordfreq==3.1.1") from None
    source = dict.fromkeys(unicodedata.normalize("NFC", w) for w in top_n_list(code, VOCAB_SOURCE_SIZE))
    if not source:
        raise SynthError(f"wordfreq has no word list for {lang.name} ({code!r}); upgrade it: "
                         "pip install wordfreq==3.1.1")
    with Espeak() as tts:
        tts.set_voice(lang.accents[0])
        words = tuple(w for w in source if _speakable(tts, w, lang))
    weights = np.arange(1, len(words) + 1, dtype=np.float64) ** -ZIPF_FLATTEN
    return words, weights / weights.sum()


def sample_sentence(rng: np.random.Generator, code: str = "en") -> list[str]:
    """3-20 lower-case words of the language drawn with flattened Zipf weights."""
    words, probs = vocabulary(code)
    n = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
    return [words[i] for i in rng.choice(len(words), size=n, p=probs)]


def generate_sentences(n: int, seed: int = 0, code: str = "en") -> list[str]:
    """`n` transcripts for a seed, written as the corpus writes them (English upper case, LibriSpeech style)."""
    rng = np.random.default_rng(seed)
    return [language(code).transcript(" ".join(sample_sentence(rng, code))) for _ in range(n)]
