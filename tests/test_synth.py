"""Tests for the offline synthetic demo corpus (tiny sizes: a few seconds in total)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.synth.corpus import SAMPLE_RATE, SPLITS, SynthConfig, resample, synthesize_corpus
from asr.data.synth.espeak import Espeak, SynthError, speak
from asr.data.synth.sentences import generate_sentences, vocabulary
from asr.data.synth.voices import voice_roster

TINY = {"train_minutes": 1.5, "dev_minutes": 0.5, "test_minutes": 0.5}
TRANSCRIPT = re.compile(r"^[A-Z']+( [A-Z']+)*$")
# The English corpus of TINY with seed 0 as written before the corpus had other languages (sha256 of every
# trans.txt, and of every FLAC's samples, with their paths): English output must not change.
ENGLISH_TRANSCRIPTS_SHA256 = "4ebcdc7ad5f21ed7e3985a9af072bc7933b6762af90663bcadc1429ce39f7cc7"
ENGLISH_AUDIO_SHA256 = "cb4c1d74f35cfd536d676463f54a6fc28c7b45e2b2443175f26a93508b0bb6c5"


def _transcripts(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*.trans.txt"):
        for line in path.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out[utt_id] = text
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    return root, synthesize_corpus(SynthConfig(root=root, seed=0, workers=2, **TINY), progress=False)


def test_layout_and_ids(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    flacs = sorted(root.rglob("*.flac"))
    assert {p.relative_to(root).parts[0] for p in flacs} == set(SPLITS)
    ids = [p.stem for p in flacs]
    assert len(ids) == len(set(ids))
    for path in flacs:
        _, speaker, chapter, _ = path.relative_to(root).parts
        assert re.fullmatch(r"\d+-\d+-\d+", path.stem)
        assert path.stem.split("-")[:2] == [speaker, chapter]
        assert (path.parent / f"{speaker}-{chapter}.trans.txt").exists()
    assert set(_transcripts(root)) == set(ids)
    assert sum(summary[s]["utterances"] for s in SPLITS) == len(flacs)
    meta = json.loads((root / "corpus.json").read_text())
    assert meta["summary"] == summary
    assert "wordfreq" in (root / "README.md").read_text()
    assert not (root / ".synth-in-progress").exists()


def corpus_digests(root: Path) -> tuple[str, str]:
    """sha256 of the transcripts (bytes) and of the audio (decoded samples, so a FLAC encoder's framing does not
    count), each file with its path."""
    text, audio = hashlib.sha256(), hashlib.sha256()
    for path in sorted(root.rglob("*.trans.txt")):
        text.update(path.relative_to(root).as_posix().encode() + b"\n" + path.read_bytes())
    for path in sorted(root.rglob("*.flac")):
        audio.update(path.relative_to(root).as_posix().encode() + sf.read(path, dtype="int16")[0].tobytes())
    return text.hexdigest(), audio.hexdigest()


def test_english_corpus_is_unchanged_by_other_languages(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    assert corpus_digests(root) == (ENGLISH_TRANSCRIPTS_SHA256, ENGLISH_AUDIO_SHA256)
    meta = json.loads((root / "corpus.json").read_text())
    assert "language" not in meta["config"] and meta["language"]["code"] == "en"  # earlier corpora stay valid
    assert min(min(meta["summary"][s]["speakers"]) for s in SPLITS) >= 9001


def test_transcripts_are_librispeech_style(corpus: tuple[Path, dict]) -> None:
    for text in _transcripts(corpus[0]).values():
        assert TRANSCRIPT.fullmatch(text), text
        assert 3 <= len(text.split()) <= 20


def test_audio_is_16k_mono_speech(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    total = 0.0
    for path in root.rglob("*.flac"):
        audio, rate = sf.read(path, dtype="float32")
        assert rate == SAMPLE_RATE and audio.ndim == 1
        assert np.abs(audio).max() > 0.5 and np.sqrt(np.mean(audio**2)) > 0.02
        assert 0.5 < len(audio) / rate < 15
        total += len(audio) / rate
    assert total / 60 == pytest.approx(sum(summary[s]["minutes"] for s in SPLITS), abs=0.01)
    assert summary["train"]["minutes"] == pytest.approx(1.5, rel=0.3)


def test_voices_held_out(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    assert len(summary["train"]["voices"]) >= 8
    assert len(summary["dev"]["voices"]) == 2 and len(summary["test"]["voices"]) == 2
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not set(summary[a]["voices"]) & set(summary[b]["voices"])
        assert not set(summary[a]["speakers"]) & set(summary[b]["speakers"])
    on_disk = {s: {int(p.name) for p in (root / s).iterdir()} for s in SPLITS}
    assert all(on_disk[s] == set(summary[s]["speakers"]) for s in SPLITS)
    roster = voice_roster()
    assert len(roster["train"]) >= 40


def test_deterministic_across_runs_and_workers(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = corpus
    again = tmp_path / "again"
    assert synthesize_corpus(SynthConfig(root=again, seed=0, workers=1, **TINY), progress=False) == summary
    assert _transcripts(again) == _transcripts(root)
    for path in root.rglob("*.flac"):
        twin = again / path.relative_to(root)
        assert np.array_equal(sf.read(path, dtype="int16")[0], sf.read(twin, dtype="int16")[0])
        assert path.read_bytes() == twin.read_bytes()

    other = tmp_path / "other"
    synthesize_corpus(SynthConfig(root=other, seed=1, workers=1, **TINY), progress=False)
    assert set(_transcripts(other).values()) != set(_transcripts(root).values())


def test_second_call_is_a_no_op(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert synthesize_corpus(SynthConfig(root=root, seed=0, workers=3, **TINY), progress=False) == summary
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_changed_config_regenerates_in_place(tmp_path: Path) -> None:
    root = tmp_path / "c"
    small = {"train_minutes": 0.3, "dev_minutes": 0.1, "test_minutes": 0.1, "workers": 1}
    synthesize_corpus(SynthConfig(root=root, seed=0, **small), progress=False)
    (root / "train" / "stale.txt").write_text("left over")
    second = synthesize_corpus(SynthConfig(root=root, seed=5, **small), progress=False)
    assert not (root / "train" / "stale.txt").exists()
    assert json.loads((root / "corpus.json").read_text())["config"]["seed"] == 5
    assert sum(second[s]["utterances"] for s in SPLITS) == len(list(root.rglob("*.flac")))


def test_refuses_to_clobber_foreign_data(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.flac").write_bytes(b"")
    with pytest.raises(SynthError):
        synthesize_corpus(SynthConfig(root=tmp_path, workers=1, **TINY), progress=False)


def test_sentence_generator_vocabulary() -> None:
    texts = generate_sentences(1000, seed=0)
    assert texts == generate_sentences(1000, seed=0)
    assert texts != generate_sentences(1000, seed=1)
    assert all(TRANSCRIPT.fullmatch(s) and 3 <= len(s.split()) <= 20 for s in texts)
    assert len({w for s in texts for w in s.split()}) >= 1000
    words, probs = vocabulary()
    assert len(words) >= 3000 and probs.sum() == pytest.approx(1.0)
    assert not {"mr", "etc", "dna", "usa", "ii"} & set(words)  # spelled out or expanded by espeak


def test_resampler_keeps_speech_band_and_timing() -> None:
    t = np.arange(22050) / 22050
    y = resample(np.sin(2 * np.pi * 1000 * t), 22050, 16000)
    n = np.arange(len(y))
    assert len(y) == 16000
    assert np.abs(y - np.sin(2 * np.pi * 1000 * n / 16000))[200:-200].max() < 1e-3
    alias = resample(np.sin(2 * np.pi * 9500 * t), 22050, 16000)
    assert np.abs(alias[200:-200]).max() < 0.01


def test_missing_engine_raises_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    with pytest.raises(SynthError, match="pip install espeakng-loader"):
        Espeak()


def test_each_utterance_is_reproducible_in_one_process() -> None:
    # libespeak-ng keeps state between utterances; speak() must not let it leak.
    args = ("the quick brown fox.", "en-gb-x-rp+f4", 170, 50, 50, 7)
    first, rate = speak(*args)
    speak("something else entirely, with another voice.", "en-029+f5", 200, 70, 80, 3)
    again, _ = speak(*args)
    assert rate == 22050 and len(first) > rate // 2
    assert np.array_equal(first, again)


def test_speak_refuses_a_library_loaded_elsewhere() -> None:
    held = Espeak()
    try:
        with pytest.raises(SynthError, match="already loaded"):
            speak("hello.", "en-us", 175, 50, 50, 0)
    finally:
        held.close()
