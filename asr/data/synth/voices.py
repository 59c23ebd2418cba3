"""The synthetic speakers: 40 training voices (8 English accents, each with a different espeak variant and its own
base prosody) and 2 held-out voices each for dev and test, on accent+variant pairs training never hears."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Voice:
    """One speaker: an espeak voice spec ("accent+variant") plus base prosody."""

    name: str
    pitch: int  # espeak base pitch, 0-100
    range: int  # espeak pitch range, 0-100
    rate: int  # words per minute


ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
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
FIRST_SPEAKER = 9001


def voice_roster() -> dict[str, tuple[Voice, ...]]:
    """Fixed voices per split (independent of the seed so speaker ids stay stable)."""
    rng = np.random.default_rng(20240601)
    train = tuple(
        Voice(
            f"{ACCENTS[i % len(ACCENTS)]}+{variant}",
            int(rng.integers(30, 71)),
            int(rng.integers(25, 86)),
            int(rng.integers(145, 196)),
        )
        for i, variant in enumerate(TRAIN_VARIANTS)
    )
    roster = {"train": train, **HELD_OUT}
    names = [v.name for voices in roster.values() for v in voices]
    assert len(names) == len(set(names)), "a voice would appear in two splits"
    return roster
