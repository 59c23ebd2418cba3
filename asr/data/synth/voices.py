"""The synthetic speakers of a language: training voices (its eSpeak NG accents, each paired with a different espeak
variant, each with its own base prosody) and 2 held-out voices each for dev and test, on accent+variant pairs
training never hears. English has 40 training voices over 8 accents; the other languages have 1-3 accents, so
their held-out variants are kept out of training altogether (36 training voices)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asr.data.synth.languages import Language, language


@dataclass(frozen=True)
class Voice:
    """One speaker: an espeak voice spec ("accent+variant") plus base prosody."""

    name: str
    pitch: int  # espeak base pitch, 0-100
    range: int  # espeak pitch range, 0-100
    rate: int  # words per minute


# Variants from espeak-ng-data/voices/!v that still sound like speech; whisper,
# voicing-0, heavy-echo and "robot" variants are deliberately left out.
# fmt: off
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "klatt4", "Annie", "aunty", "belinda", "linda", "steph", "grandma", "Andrea", "anika", "Alex", "Andy", "Gene",
    "Jacky", "Mike", "Storm", "adam", "antonio", "benjamin", "boris", "david", "ed", "edward", "gustave", "iven",
)
# fmt: on
# Held-out voices: plain, clearly intelligible variants on accents they never have in training.
HELD_OUT = {
    "dev": (Voice("en-gb-x-rp+f2", 55, 55, 165), Voice("en-us+m7", 45, 50, 175)),
    "test": (Voice("en-gb-scotland+f1", 58, 60, 170), Voice("en-us-nyc+m3", 42, 45, 160)),
}


def voice_roster(code: str = "en") -> dict[str, tuple[Voice, ...]]:
    """Fixed voices per split for a language (independent of the seed so speaker ids stay stable)."""
    lang = language(code)
    held_out, variants = (HELD_OUT, TRAIN_VARIANTS) if code == "en" else _held_out(lang)
    rng = np.random.default_rng(20240601)
    train = tuple(
        Voice(
            f"{lang.accents[i % len(lang.accents)]}+{variant}",
            int(rng.integers(30, 71)),
            int(rng.integers(25, 86)),
            int(rng.integers(145, 196)),
        )
        for i, variant in enumerate(variants)
    )
    roster = {"train": train, **held_out}
    names = [v.name for voices in roster.values() for v in voices]
    assert len(names) == len(set(names)), "a voice would appear in two splits"
    return roster


def _held_out(lang: Language) -> tuple[dict[str, tuple[Voice, ...]], tuple[str, ...]]:
    """English's held-out variants and prosody spread over the language's accents, and the training variants
    (all but those)."""
    voices = [v for split in ("dev", "test") for v in HELD_OUT[split]]
    variants = [v.name.split("+")[1] for v in voices]
    renamed = [Voice(f"{lang.accents[k % len(lang.accents)]}+{variants[k]}", v.pitch, v.range, v.rate)
               for k, v in enumerate(voices)]
    train = tuple(v for v in TRAIN_VARIANTS if v not in variants)
    return {"dev": tuple(renamed[:2]), "test": tuple(renamed[2:])}, train
