"""Offline demo corpus: synthetic English speech in the LibriSpeech on-disk layout.

Why: the toolkit must train and validate end to end on a fresh machine with no
download. Speech comes from eSpeak NG (bundled in the PyPI wheel ``espeakng-loader``,
driven through ctypes); text comes from the ``wordfreq`` English word list.

Sources and licences (also written to ``<root>/README.md`` and ``docs/demo_corpus.md``):

* eSpeak NG 1.52 (GPL-3.0-or-later) is loaded at run time from the ``espeakng-loader``
  wheel, which bundles the library and ``espeak-ng-data`` (the wheel declares no
  licence of its own). Audio produced by the program is not covered by the GPL.
* Words: the top English words of ``wordfreq`` 3.1 (code Apache-2.0, word-frequency
  data CC BY-SA 4.0, built from Wikipedia, subtitles, news, books, web text and more).
  Sentences are random word sequences, so transcripts carry CC BY-SA 4.0 attribution.

Voices generalise better than hours, so training uses 40 voices (8 English accents,
each paired with a different espeak variant, each with its own base pitch, range and
rate, jittered per utterance); dev and test get 2 voices each, built from
accent+variant pairs that never occur in training.

Reproducibility: every random choice flows from ``SynthConfig.seed`` through explicit numpy
generators, and libespeak-ng is loaded afresh for every utterance (see ``Espeak``), so the
same config gives byte-identical files whatever the number of workers. Linux/POSIX only.
"""

from __future__ import annotations

import _ctypes
import codecs
import ctypes
import json
import math
import multiprocessing as mp
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Self

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr import UserError


class SynthError(UserError):
    """The speech engine or word list is unusable, or the output folder is not ours to overwrite."""

SAMPLE_RATE = 16_000
SPLITS = ("train", "dev", "test")
FORMAT_VERSION = 1  # bump whenever the output for a given config changes
INSTALL_HINT = "pip install espeakng-loader==0.2.4"


@dataclass
class SynthConfig:
    root: Path  # output folder; splits are written as root/train, root/dev, root/test
    seed: int = 0  # same seed + same config -> byte-identical transcripts and audio
    train_minutes: float = 150.0
    dev_minutes: float = 4.0
    test_minutes: float = 4.0
    workers: int = 2  # processes used for synthesis


# ----------------------------------------------------------------------------- voices


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


# ----------------------------------------------------------------------------- engine

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS, _INIT_DONT_EXIT = 2, 0x8000
_POS_CHARACTER, _CHARS_UTF8, _PHONEMES_IPA = 1, 1, 2
_RATE, _PITCH, _RANGE = 1, 3, 4


class Espeak:
    """A freshly loaded libespeak-ng (synchronous mode, samples via callback); use as a context manager.

    libespeak-ng keeps wave-generator state across utterances (pitch-flutter phase, gain
    control, echo buffer) that no API resets, so a second utterance from one loaded instance
    differs from the same utterance spoken first. Loading the library afresh for every
    utterance (about 3 ms) makes each one a function of its own arguments alone.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader

            self.path = espeakng_loader.get_library_path()
            lib = ctypes.CDLL(self.path)
            data = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as exc:
            raise SynthError(f"espeak-ng TTS engine unavailable ({exc}); install it: {INSTALL_HINT}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        uint, ptr = ctypes.c_uint, ctypes.c_void_p
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, uint, ctypes.c_int, uint, uint, ptr, ptr]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib = lib
        self.native_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INIT_DONT_EXIT)
        if self.native_rate <= 0:
            self.close()
            raise SynthError(f"espeak-ng failed to initialise with data at {data}; reinstall: {INSTALL_HINT}")
        self.version = lib.espeak_Info(None).decode().split()[0]
        self._chunks: list[bytes] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds only a raw pointer
        lib.espeak_SetSynthCallback(self._callback)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Terminate and unload, so the next instance starts from the library's initial state."""
        self._lib.espeak_Terminate()
        _ctypes.dlclose(self._lib._handle)

    def _collect(self, wav: ctypes.Array, n: int, _events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, 2 * n))
        return 0  # 0 = keep synthesising

    def set_voice(self, name: str) -> None:
        if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise SynthError(f"espeak-ng has no voice {name!r}; check espeak-ng-data/voices")

    def speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        """int16 samples at `native_rate`; only the first call per instance is reproducible."""
        self.set_voice(voice)
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, value, 0)
        self._lib.espeak_ng_SetRandSeed(seed)  # breath noise uses espeak's generator ...
        ctypes.CDLL(None).srand(seed & 0xFFFFFFFF)  # ... and libc rand()
        self._chunks.clear()
        raw = text.encode()
        if self._lib.espeak_Synth(raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise SynthError(f"espeak-ng could not synthesise {text!r}")
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16)  # complete once espeak_Synth returns

    def phonemes(self, text: str) -> str:
        """IPA for `text` in the current voice (used to vet the vocabulary)."""
        buf = ctypes.create_string_buffer(text.encode())
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        out = []
        while ptr.value:
            out.append(self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA).decode())
        return " ".join(out)


def speak(text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int) -> tuple[np.ndarray, int]:
    """Reproducibly synthesise one utterance with a freshly loaded library: (int16 samples, sample rate)."""
    if _already_loaded():
        raise SynthError(
            "libespeak-ng is already loaded in this process, so its state would carry over; "
            "synthesise in a process of its own (SynthConfig.workers >= 2)"
        )
    with Espeak() as tts:
        return tts.speak(text, voice, rate, pitch, pitch_range, seed), tts.native_rate


def _already_loaded() -> bool:
    try:
        import espeakng_loader

        handle = ctypes.CDLL(espeakng_loader.get_library_path(), mode=os.RTLD_NOLOAD)._handle
    except (ImportError, OSError, RuntimeError):
        return False
    _ctypes.dlclose(handle)
    return True


# ----------------------------------------------------------------------------- text

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


# ----------------------------------------------------------------------------- audio

PEAK = 10 ** (-3 / 20)  # -3 dBFS
KEEP_SILENCE_S = 0.15
NOISE_FLOOR = 10 ** (-70 / 20)  # -70 dBFS rms


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain.

    numpy's FFT is single-threaded and BLAS-free, so it does not compete with the synthesis
    children for cores; a short raised-cosine roll-off below the new Nyquist avoids ringing.
    """
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    size = down * 2 ** max(0, math.ceil(math.log2((len(x) + 1024) / down)))  # padded: wrap-around stays silent
    out_size = size // down * up
    spectrum = np.fft.rfft(x, size)[: out_size // 2 + 1]
    freqs = np.arange(len(spectrum)) * rate_in / size
    edge = min(rate_in, rate_out) / 2
    ramp = np.clip((freqs - 0.9 * edge) / (0.1 * edge), 0.0, 1.0)
    spectrum *= 0.5 + 0.5 * np.cos(np.pi * ramp)
    return np.fft.irfft(spectrum, out_size)[: len(x) * up // down] * (up / down)


def finish_audio(x: np.ndarray, rate_in: int, rng: np.random.Generator) -> np.ndarray:
    """Resample to 16 kHz, trim to the speech plus 0.15 s each side, peak-normalise, int16.

    espeak emits digital zeros (at the edges and between words); a faint noise floor keeps
    log-spectral features finite and the model from keying on exact silence.
    """
    y = resample(x.astype(np.float64), rate_in, SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(y) > 0.01 * np.abs(y).max(initial=0.0))
    if len(loud) == 0:
        raise SynthError("espeak-ng produced silence")
    pad = np.zeros(int(KEEP_SILENCE_S * SAMPLE_RATE))
    y = np.concatenate([pad, y[loud[0] : loud[-1] + 1], pad])
    y *= PEAK / np.abs(y).max()
    y += rng.normal(0.0, NOISE_FLOOR, len(y))
    return np.round(np.clip(y, -1, 1) * 32767).astype(np.int16)


# ----------------------------------------------------------------------------- corpus

CHAPTER_SIZE = 25  # utterances per chapter
CHAPTERS_PER_SPEAKER = 1000  # chapter ids: speaker k (0-based) gets k*1000+1, ... so ids never depend on sizes
_SECONDS_PER_WORD_AT_175 = 0.35  # measured; used only to plan how many sentences fill the budget
_OVERHEAD_S = 0.48  # 0.3 s padding plus sentence-final lengthening


@dataclass(frozen=True)
class _Utterance:
    """What one utterance says and how (seed drives espeak's noise and the noise floor)."""

    voice: Voice
    text: str  # lower case, as spoken
    rate: int
    pitch: int
    pitch_range: int
    seed: int


def _plan_split(split: str, minutes: float, voices: tuple[Voice, ...], seed: int) -> list[_Utterance]:
    """Deterministic utterances for a split; its own RNG so splits do not shift each other."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    order = rng.permutation(len(voices))
    plan: list[_Utterance] = []
    budget = minutes * 60
    while budget > 0:
        k = int(order[len(plan) % len(voices)])
        voice, words = voices[k], sample_sentence(rng)
        rate = round(voice.rate * rng.uniform(0.85, 1.15))
        pitch = int(np.clip(voice.pitch + rng.integers(-8, 9), 0, 100))
        pitch_range = int(np.clip(voice.range + rng.integers(-10, 11), 0, 100))
        plan.append(_Utterance(voice, " ".join(words), rate, pitch, pitch_range, int(rng.integers(2**31))))
        budget -= len(words) * _SECONDS_PER_WORD_AT_175 * 175 / rate + _OVERHEAD_S
    return plan


def _identity(cfg: SynthConfig) -> dict:
    """What determines the output (root and workers do not)."""
    return {
        "format": FORMAT_VERSION,
        "seed": cfg.seed,
        "train_minutes": cfg.train_minutes,
        "dev_minutes": cfg.dev_minutes,
        "test_minutes": cfg.test_minutes,
    }


def _prepare_root(root: Path) -> None:
    """Clear splits left by an earlier or interrupted synth run; refuse to touch foreign data."""
    marker = root / ".synth-in-progress"
    ours = marker.exists() or (root / "corpus.json").exists()
    for split in SPLITS:
        folder = root / split
        if folder.exists() and any(folder.iterdir()):
            if not ours:
                raise SynthError(f"{folder} exists and was not written by asr.data.synth; pick another root")
            shutil.rmtree(folder)
    (root / "corpus.json").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    marker.touch()


def synthesize_corpus(cfg: SynthConfig, progress: bool = True) -> dict:
    """Writes the corpus (skips work if root/corpus.json already records the same config) and returns a summary
    dict: per split -> {"utterances": n, "minutes": m, "voices": [...], "speakers": [...]}, plus "distinct_words".

    With workers >= 2 it uses spawned processes, so scripts must call it under ``if __name__ == "__main__":``.
    """
    root = Path(cfg.root)
    meta_path = root / "corpus.json"
    if meta_path.exists():
        stored = json.loads(meta_path.read_text())
        if stored.get("config") == _identity(cfg):
            return stored["summary"]

    with Espeak() as tts:  # fail fast with an actionable SynthError
        engine_version = tts.version
    roster = voice_roster()
    speaker_of = {v.name: FIRST_SPEAKER + i for i, v in enumerate(v for vs in roster.values() for v in vs)}
    _prepare_root(root)

    # Plan everything up front (cheap): ids, transcripts and per-utterance seeds.
    jobs: list[tuple[Path, _Utterance]] = []
    transcripts: dict[Path, list[str]] = {}
    used: dict[str, list[Voice]] = {}
    for split in SPLITS:
        plan = _plan_split(split, getattr(cfg, f"{split}_minutes"), roster[split], cfg.seed)
        used[split] = [v for v in roster[split] if any(u.voice == v for u in plan)]
        for voice in used[split]:
            speaker = speaker_of[voice.name]
            mine = [u for u in plan if u.voice == voice]
            assert len(mine) <= CHAPTER_SIZE * CHAPTERS_PER_SPEAKER, "corpus too large for the chapter id scheme"
            for k, start in enumerate(range(0, len(mine), CHAPTER_SIZE)):
                chapter = (speaker - FIRST_SPEAKER) * CHAPTERS_PER_SPEAKER + k + 1
                folder = root / split / str(speaker) / str(chapter)
                folder.mkdir(parents=True, exist_ok=True)
                lines = transcripts[folder / f"{speaker}-{chapter}.trans.txt"] = []
                for i, u in enumerate(mine[start : start + CHAPTER_SIZE]):
                    utt_id = f"{speaker}-{chapter}-{i:04d}"
                    jobs.append((folder / f"{utt_id}.flac", u))
                    lines.append(f"{utt_id} {u.text.upper()}")

    samples: dict[Path, int] = {}
    with tqdm(total=len(jobs), desc="synthesising", unit="utt", disable=not progress) as bar:
        if cfg.workers <= 1:
            results = map(_render, jobs)
            samples = dict(_count(results, bar))
        else:  # spawn: fresh interpreters, whatever threads or libraries the caller has
            with mp.get_context("spawn").Pool(cfg.workers) as pool:
                samples = dict(_count(pool.imap_unordered(_render, jobs, chunksize=4), bar))
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    lengths = {
        split: [n for path, n in samples.items() if path.relative_to(root).parts[0] == split] for split in SPLITS
    }
    summary: dict = {
        split: {
            "utterances": len(lengths[split]),
            "minutes": round(sum(lengths[split]) / SAMPLE_RATE / 60, 3),
            "voices": [v.name for v in used[split]],
            "speakers": [speaker_of[v.name] for v in used[split]],
        }
        for split in SPLITS
    }
    summary["distinct_words"] = len({w for _, u in jobs for w in u.text.split()})

    sources = {
        "engine": f"espeak-ng {engine_version} via espeakng-loader {_version('espeakng-loader')}",
        "text": f"wordfreq {_version('wordfreq')} top {VOCAB_SOURCE_SIZE} English words",
    }
    speakers = {
        speaker_of[v.name]: {"split": split, "voice": v.name, "pitch": v.pitch, "range": v.range, "rate": v.rate}
        for split, vs in roster.items()
        for v in vs
    }
    (root / "README.md").write_text(_readme(summary, sources))
    meta = {"config": _identity(cfg), "summary": summary, "sources": sources, "speakers": speakers}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # last: its presence means "complete"
    (root / ".synth-in-progress").unlink()
    return summary


def _render(job: tuple[Path, _Utterance]) -> tuple[Path, int]:
    """Synthesise one utterance to FLAC (runs in a worker); returns (path, samples)."""
    path, u = job
    raw, rate = speak(u.text + ".", u.voice.name, u.rate, u.pitch, u.pitch_range, u.seed)
    audio = finish_audio(raw, rate, np.random.default_rng(u.seed))
    sf.write(path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return path, len(audio)


def _count(results: Iterator[tuple[Path, int]], bar: tqdm) -> Iterator[tuple[Path, int]]:
    for item in results:
        bar.update()
        yield item


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _readme(summary: dict, sources: dict[str, str]) -> str:
    rows = "\n".join(
        f"| {s} | {summary[s]['utterances']} | {summary[s]['minutes']:.1f} | {len(summary[s]['voices'])} |"
        for s in SPLITS
    )
    return f"""# Synthetic English demo corpus

Written by `asr.data.synth` so the toolkit can train and validate with no download.
Layout and transcript format follow LibriSpeech: `<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`
(16 kHz mono FLAC) plus one `<speaker>-<chapter>.trans.txt` per chapter. Each speaker is one synthetic
voice; dev and test voices never occur in train. Voice details are in `corpus.json`.

| split | utterances | minutes | voices |
|---|---|---|---|
{rows}

Distinct words: {summary["distinct_words"]}. Sentences are random word sequences (3-20 words), not natural text.

## Sources and licences
- Speech: {sources["engine"]}. eSpeak NG is GPL-3.0-or-later; audio it produces is not covered by the GPL.
- Text: {sources["text"]}, sampled with flattened Zipf weights. wordfreq's code is Apache-2.0 and its
  word-frequency data is CC BY-SA 4.0 (sources: Wikipedia, OpenSubtitles, news, Google Books, web text,
  and others; see https://github.com/rspeer/wordfreq). The transcripts are therefore shared under
  CC BY-SA 4.0 with attribution to wordfreq.
"""
