"""The demo corpus on disk: plan every utterance from the seed, synthesise them in worker processes, finish the
audio (16 kHz, trimmed, normalised, a faint noise floor) and write the LibriSpeech layout with its README."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.data.progress import Bar, progress_bar
from asr.data.synth.espeak import Espeak, SynthError, speak
from asr.data.synth.languages import Language, language
from asr.data.synth.sentences import VOCAB_SOURCE_SIZE, sample_sentence
from asr.data.synth.voices import Voice, voice_roster
from asr.settings import SynthConfig

SAMPLE_RATE = 16_000
SPLITS = ("train", "dev", "test")
FORMAT_VERSION = 1  # bump whenever the output for a given config changes


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


CHAPTER_SIZE = 25  # utterances per chapter
CHAPTERS_PER_SPEAKER = 1000  # chapter ids: speaker k (0-based) gets k*1000+1, ... so ids never depend on sizes
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


def _plan_split(split: str, minutes: float, voices: tuple[Voice, ...], seed: int, lang: Language
                ) -> list[_Utterance]:
    """Deterministic utterances for a split; its own RNG so splits do not shift each other."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    order = rng.permutation(len(voices))
    plan: list[_Utterance] = []
    budget = minutes * 60
    while budget > 0:
        k = int(order[len(plan) % len(voices)])
        voice, words = voices[k], sample_sentence(rng, lang.code)
        rate = round(voice.rate * rng.uniform(0.85, 1.15))
        pitch = int(np.clip(voice.pitch + rng.integers(-8, 9), 0, 100))
        pitch_range = int(np.clip(voice.range + rng.integers(-10, 11), 0, 100))
        plan.append(_Utterance(voice, " ".join(words), rate, pitch, pitch_range, int(rng.integers(2**31))))
        budget -= len(words) * lang.seconds_per_word * 175 / rate + _OVERHEAD_S
    return plan


def _identity(cfg: SynthConfig) -> dict:
    """What determines the output (root and workers do not). English leaves the language out, so corpora written
    before there were other languages stay valid."""
    return {
        "format": FORMAT_VERSION,
        "seed": cfg.seed,
        "train_minutes": cfg.train_minutes,
        "dev_minutes": cfg.dev_minutes,
        "test_minutes": cfg.test_minutes,
    } | ({} if cfg.language == "en" else {"language": cfg.language})


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
        stored = json.loads(meta_path.read_text(encoding="utf-8"))
        if stored.get("config") == _identity(cfg):
            return stored["summary"]

    lang = language(cfg.language)
    with Espeak() as tts:  # fail fast with an actionable SynthError
        engine_version = tts.version
        for accent in lang.accents:
            tts.set_voice(accent)
    roster = voice_roster(lang.code)
    speaker_of = {v.name: lang.first_speaker + i for i, v in enumerate(v for vs in roster.values() for v in vs)}
    plans = {split: _plan_split(split, getattr(cfg, f"{split}_minutes"), roster[split], cfg.seed, lang)
             for split in SPLITS}  # before anything is written: the word list can fail
    _prepare_root(root)
    jobs, transcripts, used = _plan_corpus(plans, root, roster, speaker_of, lang)
    samples = _render_all(jobs, cfg.workers, progress)
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = _summary(root, jobs, samples, used, speaker_of)
    sources = {
        "engine": f"espeak-ng {engine_version} via espeakng-loader {_version('espeakng-loader')}",
        "text": f"wordfreq {_version('wordfreq')} top {VOCAB_SOURCE_SIZE} {lang.name} words",
    }
    speakers = {
        speaker_of[v.name]: {"split": split, "voice": v.name, "pitch": v.pitch, "range": v.range, "rate": v.rate}
        for split, vs in roster.items()
        for v in vs
    }
    (root / "README.md").write_text(_readme(summary, sources, lang), encoding="utf-8")
    meta = {"config": _identity(cfg), "language": _language_meta(lang), "summary": summary, "sources": sources,
            "speakers": speakers}
    # last: its presence means "complete"
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (root / ".synth-in-progress").unlink()
    return summary


def _plan_corpus(plans: dict[str, list[_Utterance]], root: Path, roster: dict[str, tuple[Voice, ...]],
                 speaker_of: dict[str, int], lang: Language
                 ) -> tuple[list[tuple[Path, _Utterance]], dict[Path, list[str]], dict[str, list[Voice]]]:
    """Everything up front (cheap): (flac path, utterance) jobs, transcript lines per trans.txt, and the voices
    each split uses. Creates the chapter folders."""
    jobs: list[tuple[Path, _Utterance]] = []
    transcripts: dict[Path, list[str]] = {}
    used: dict[str, list[Voice]] = {}
    for split, plan in plans.items():
        used[split] = [v for v in roster[split] if any(u.voice == v for u in plan)]
        for voice in used[split]:
            speaker = speaker_of[voice.name]
            mine = [u for u in plan if u.voice == voice]
            assert len(mine) <= CHAPTER_SIZE * CHAPTERS_PER_SPEAKER, "corpus too large for the chapter id scheme"
            for k, start in enumerate(range(0, len(mine), CHAPTER_SIZE)):
                chapter = (speaker - lang.first_speaker) * CHAPTERS_PER_SPEAKER + k + 1
                folder = root / split / str(speaker) / str(chapter)
                folder.mkdir(parents=True, exist_ok=True)
                lines = transcripts[folder / f"{speaker}-{chapter}.trans.txt"] = []
                for i, u in enumerate(mine[start : start + CHAPTER_SIZE]):
                    utt_id = f"{speaker}-{chapter}-{i:04d}"
                    jobs.append((folder / f"{utt_id}.flac", u))
                    lines.append(f"{utt_id} {lang.transcript(u.text)}")
    return jobs, transcripts, used


def _render_all(jobs: list[tuple[Path, _Utterance]], workers: int, progress: bool) -> dict[Path, int]:
    """Synthesises every job; returns samples written per file."""
    with progress_bar(total=len(jobs), desc="synthesising", unit="utt", enabled=progress) as bar:
        if workers <= 1:
            return dict(_count(map(_render, jobs), bar))
        # spawn: fresh interpreters, whatever the caller has. An executor, not a Pool: a worker that dies (a crash
        # in the speech engine) breaks it with an error, where a Pool would wait for its results forever.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            try:
                return dict(_count(pool.map(_render, jobs, chunksize=4), bar))
            except BrokenProcessPool:
                raise SynthError("a synthesis process died (a crash in libespeak-ng); run again, or with "
                                 "--workers 1 to see the error") from None


def _summary(root: Path, jobs: list[tuple[Path, _Utterance]], samples: dict[Path, int],
             used: dict[str, list[Voice]], speaker_of: dict[str, int]) -> dict:
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
    return summary


def _render(job: tuple[Path, _Utterance]) -> tuple[Path, int]:
    """Synthesise one utterance to FLAC (runs in a worker); returns (path, samples)."""
    path, u = job
    raw, rate = speak(u.text + ".", u.voice.name, u.rate, u.pitch, u.pitch_range, u.seed)
    audio = finish_audio(raw, rate, np.random.default_rng(u.seed))
    sf.write(path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return path, len(audio)


def _count(results: Iterator[tuple[Path, int]], bar: Bar) -> Iterator[tuple[Path, int]]:
    for item in results:
        bar.update()
        yield item


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _language_meta(lang: Language) -> dict:
    """What corpus.json says about the language: its code, name, accents and the characters transcripts use."""
    case = "upper" if lang.upper_case else "lower"
    return {"code": lang.code, "name": lang.name, "accents": list(lang.accents),
            "alphabet": lang.transcript(lang.alphabet), "case": case, "unicode": "NFC"}


def _readme(summary: dict, sources: dict[str, str], lang: Language) -> str:
    rows = "\n".join(
        f"| {s} | {summary[s]['utterances']} | {summary[s]['minutes']:.1f} | {len(summary[s]['voices'])} |"
        for s in SPLITS
    )
    meta = _language_meta(lang)
    return f"""# Synthetic {lang.name} demo corpus

Written by `asr.data.synth` so the toolkit can train and validate with no download.
Layout and transcript format follow LibriSpeech: `<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`
(16 kHz mono FLAC) plus one `<speaker>-<chapter>.trans.txt` per chapter. Each speaker is one synthetic
voice; dev and test voices never occur in train. Voice details are in `corpus.json`.

Language: {lang.name} (`{lang.code}`), spoken by eSpeak NG's {", ".join(f"`{a}`" for a in lang.accents)} voices.
Transcripts are {meta["case"]} case, Unicode NFC, and use the space and these characters: `{meta["alphabet"]}`.

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
