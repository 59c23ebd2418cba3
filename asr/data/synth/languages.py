"""The languages the demo corpus can be spoken in: for each, its eSpeak NG accents, the letters its words may use
and how its transcripts are written.

Why a table rather than any code espeak and wordfreq both know: the letters a word may use are a deliberate
choice per language (a Spanish corpus keeps n with tilde and accented vowels but drops French loanwords with a
grave accent), and so are the one-letter words and the words kept out of a demo corpus.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass

from asr.data.synth.espeak import SynthError
from asr.settings import SYNTH_LANGUAGES

ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Language:
    """One corpus language. Letter strings are lower case NFC; `blocked_*` are rot13 so the source reads cleanly."""

    code: str  # ISO 639-1, as wordfreq and the CLI spell it
    name: str  # English name, for the corpus README
    accents: tuple[str, ...]  # eSpeak NG voices of the language; the first vets the word list
    letters: str  # letters a word may use besides a-z
    vowels: str  # a word needs one (else espeak spells it out)
    one_letter_words: tuple[str, ...]  # spoken as words, not letter names
    apostrophe: bool  # words may have one inner apostrophe (don't, aujourd'hui)
    first_speaker: int  # speaker ids start here, so corpora of different languages never share a file id
    seconds_per_word: float  # at 175 words/min, fitted on a 10-minute corpus: plans how many sentences fill the minutes
    upper_case: bool = False  # transcripts upper case, as LibriSpeech's (English only: upper-casing loses letters)
    blocked_words: tuple[str, ...] = ()
    blocked_stems: tuple[str, ...] = ()

    @property
    def alphabet(self) -> str:
        """Every character a transcript may hold besides the space, lower case."""
        return ASCII_LETTERS + self.letters + ("'" if self.apostrophe else "")

    def word_pattern(self) -> re.Pattern[str]:
        """A whole word of the language's letters (with at most one inner apostrophe where allowed)."""
        chars = f"[a-z{self.letters}]+"
        return re.compile(f"{chars}(?:'{chars})?" if self.apostrophe else chars)

    def is_blocked(self, word: str) -> bool:
        """True for profanity and slurs kept out of a demo corpus."""
        words = {_rot13(w) for w in self.blocked_words}
        return word in words or any(_rot13(stem) in word for stem in self.blocked_stems)

    def transcript(self, text: str) -> str:
        """How a sentence (lower case words) is written in trans.txt: upper case for English, else lower case NFC."""
        return text.upper() if self.upper_case else unicodedata.normalize("NFC", text)


def _rot13(word: str) -> str:
    return codecs.decode(word, "rot13")


# fmt: off
LANGUAGES: dict[str, Language] = {
    "en": Language(
        "en", "English",
        ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"),
        "", "aeiouy", ("a", "i"), True, 9001, 0.35, upper_case=True,
        blocked_words=("nff", "nffubyr", "qvpx", "pbpx", "chffl", "encr", "encrq", "encvfg", "penc", "cvff",
                       "cvffrq", "qnza", "frkl", "gvgf", "obbof"),
        blocked_stems=("shpx", "fuvg", "ovgpu", "avtt", "phag", "jube", "fyhg", "cbea", "ergneq")),
    "es": Language(
        "es", "Spanish", ("es", "es-419"), "áéíóúüñ", "aeiouyáéíóúü", ("a", "e", "o", "u", "y"), False, 9101, 0.41,
        blocked_words=("chgn", "chgnf", "chgb", "chgbf", "wbqre", "pbñb", "phyb", "cbyyn", "iretn", "mbeen",
                       "sbyyne", "pnoeóa", "cbeab"),
        blocked_stems=("zvreq", "craqrw", "puvatn", "znevp", "tvyvcbyy")),
    "de": Language(
        "de", "German", ("de",), "äöüß", "aeiouyäöü", (), False, 9201, 0.37,
        blocked_words=("nefpu", "uher", "uhera", "fpuynzcr", "gvggra", "cbeab", "artre", "xnpxr"),
        blocked_stems=("fpurvff", "fpurvß", "svpx", "sbgm", "jvpuf", "fpujhpugry", "uherafbua")),
    "fr": Language(
        "fr", "French", ("fr", "fr-BE", "fr-CH"), "àâæçéèêëîïôœùûüÿ", "aeiouyàâæéèêëîïôœùûüÿ", ("a", "à", "y"), True,
        9301, 0.30,
        blocked_words=("chgr", "chgrf", "pba", "pbaf", "pbaar", "ovgr", "pbhvyyr", "pbhvyyrf", "avdhr", "avdhre",
                       "puvre", "cbeab", "céqé", "aèter"),
        blocked_stems=("zreq", "chgnva", "raphy", "pbaaneq", "pbaanff", "fnybc")),
}
# fmt: on


def language(code: str) -> Language:
    """The corpus language for a code; SynthError listing the supported ones otherwise."""
    if code not in LANGUAGES:
        raise SynthError(f"--language {code!r}: no demo voices and word list for it; supported: "
                         f"{', '.join(SYNTH_LANGUAGES)}")
    return LANGUAGES[code]
