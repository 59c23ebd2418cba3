"""Bad data, one case at a time: every bad input ends in a precise one-line message naming the file and what is
wrong (exit 1 for single-item commands) or in a skip that training counts, logs to MLflow and prints once; odd but
valid input (any rate, stereo, silence, 30 minutes, a folder named `données test`) just works.

Every file is real, built here with soundfile and numpy from the shared LibriSpeech sample; the commands run as
real subprocesses (or, for most of the single-item cases, in this process) against a model trained on that
corpus, bad files and all."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from conftest import (
    asr_command,
    make_tiny_config,
    mlflow_store,
    new_store,
    one_line_error,
    run_cli_alongside,
    run_cli_here,
    short_split,
    split_dir,
    sqlite_uri,
)
from mlflow import MlflowClient

from asr.data.dataset import SpeechDataset, read_split
from asr.data.feature_store import featurize, open_store, store_folder
from asr.features import FeatureExtractor
from asr.text import encode, normalize
from asr.training.train import train

pytestmark = pytest.mark.slow  # training on corrupt corpora

RATE = 16000
CHAPTER = "9999-11"  # speaker-chapter of the files built here; the rest of the split is real, untouched
OUT_OF_VOCABULARY = "CAFÉ NAÏVE 42, “QUOTED” RÉSUMÉ!"


# ---------------------------------------------------------------- the corpus of bad (and odd) files

def corrupt(path: Path, src: Path) -> None:
    """A valid FLAC header (the first 4 KiB of a real file), then garbage."""
    head = src.read_bytes()[:4096]
    path.write_bytes(head + np.random.default_rng(0).integers(0, 256, 60_000, dtype=np.uint8).tobytes())


def truncated(path: Path, src: Path) -> None:
    """The first third of a real FLAC, as an interrupted copy leaves it."""
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def zero_length(path: Path, src: Path) -> None:
    sf.write(path, np.zeros(0, dtype=np.float32), RATE)


def not_audio(path: Path, src: Path) -> None:
    path.write_text("this is a transcript, not audio\n")


def silence(path: Path, src: Path) -> None:
    sf.write(path, np.zeros(2 * RATE, dtype=np.float32), RATE)  # digital zeros: every MFCC is constant


def copy(path: Path, src: Path) -> None:
    path.write_bytes(src.read_bytes())


def too_short(path: Path, src: Path) -> None:
    """0.3 s of the utterance, kept with its whole transcript: fewer model frames than characters."""
    sf.write(path, sf.read(src, dtype="float32")[0][: int(0.3 * RATE)], RATE)


def resampled(rate: int, channels: int = 1) -> Callable[[Path, Path], None]:
    def build(path: Path, src: Path) -> None:
        wave = AF.resample(torch.from_numpy(sf.read(src, dtype="float32")[0]), RATE, rate).numpy()
        sf.write(path, np.stack([wave * (0.9 - 0.4 * c) for c in range(channels)], axis=1), rate)
    return build


SAME = object()  # the source utterance's own transcript
# case: (utterance number in CHAPTER, audio file name extension or None for no file, how to build it from a real
# FLAC, its transcript line's text: SAME, a text, "" for the id alone on its line, or None for no line at all)
FILES = {
    "corrupt": ("0000", "flac", corrupt, SAME),
    "truncated": ("0001", "flac", truncated, SAME),
    "zero-length": ("0002", "wav", zero_length, SAME),
    "not audio": ("0003", "flac", not_audio, SAME),
    "silence": ("0004", "flac", silence, "NOTHING TO HEAR"),
    "8 kHz": ("0005", "wav", resampled(8000), SAME),
    "44.1 kHz": ("0006", "flac", resampled(44100), SAME),
    "48 kHz stereo": ("0007", "flac", resampled(48000, 2), SAME),
    "16 kHz stereo": ("0008", "wav", resampled(RATE, 2), SAME),
    "id alone": ("0009", "flac", copy, ""),
    "no audio": ("0010", None, None, "A LINE WITH NO AUDIO FILE"),
    "no line": ("0011", "flac", copy, None),
    "too short": ("0012", "flac", too_short, SAME),
    "out of vocabulary": ("0013", "flac", copy, OUT_OF_VOCABULARY),
}
UNREADABLE = ("corrupt", "truncated", "zero-length", "not audio")


@dataclass
class Corpus:
    split: Path     # données test/dev clean: the 15 shortest train-clean-5 utterances plus FILES
    long: Path      # 30 minutes of quiet noise with a pause every 10 s
    source: Path    # the real FLAC the files were built from

    def file_id(self, case: str) -> str:
        return f"{CHAPTER}-{FILES[case][0]}"

    def path(self, case: str) -> Path:
        number, ext, _, _ = FILES[case]
        return self.split / CHAPTER.replace("-", "/") / f"{CHAPTER}-{number}.{ext}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    source_split = split_dir("train-clean-5")
    root = tmp_path_factory.mktemp("bad-data") / "données test"  # spaces and non-ASCII in every path below
    split = short_split(root / "dev clean", source_split, 15)
    src = min(read_split(source_split), key=lambda u: (sf.info(str(u.path)).frames, u.file_id))
    chapter = split / CHAPTER.replace("-", "/")
    chapter.mkdir(parents=True)
    lines = []
    for number, ext, build, text in FILES.values():
        if ext:
            build(chapter / f"{CHAPTER}-{number}.{ext}", src.path)
        if text is not None:
            lines.append(f"{CHAPTER}-{number} {src.transcript if text is SAME else text}".strip())
    (chapter / f"{CHAPTER}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    noise = (np.random.default_rng(0).standard_normal(RATE) * 0.01).astype(np.float32)
    ten_seconds = np.concatenate([np.tile(noise, 9), np.zeros(RATE, dtype=np.float32)])
    long = root / "long recording, 30 min.flac"
    sf.write(long, np.tile(ten_seconds, 180), RATE)
    return Corpus(split, long, src.path)


@dataclass
class BadRun:
    root: Path        # its MLflow store and outputs
    run_id: str
    stdout: str       # what training printed
    checkpoint: Path


@pytest.fixture(scope="module")
def bad_run(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory, empty_store_db: Path) -> BadRun:
    """One real training run on the corpus, bad files and all (train and dev split alike), registered and
    promoted: the model the commands below use."""
    root = tmp_path_factory.mktemp("bad-run")
    new_store(empty_store_db, root)
    cfg = make_tiny_config(corpus.split, max_utterances=0, batch=4, output_dir=str(root / "outputs"))
    out = io.StringIO()
    with mlflow_store(root), redirect_stdout(out):
        result = train(cfg, progress=False)
    return BadRun(root, result.run_id, out.getvalue(), root / "outputs" / result.run_id / "model.pt")


# ---------------------------------------------------------------- training: skip, count, log, say which file


def test_training_skips_counts_and_names_bad_files(corpus: Corpus, bad_run: BadRun):
    with mlflow_store(bad_run.root):
        run = MlflowClient().get_run(bad_run.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert {k: metrics[k] for k in metrics if k.startswith("skipped_") and k != "skipped_steps"} == {
        "skipped_unreadable": len(UNREADABLE), "skipped_empty_transcript": 1, "skipped_too_short": 1,
        "skipped_too_long": 0}
    # 15 real utterances and the 12 files with both audio and a transcript line; 6 of those skipped
    assert run.data.params["train_utterances"] == str(15 + 12 - 6)
    lines = bad_run.stdout.splitlines()
    for case in UNREADABLE:
        said = [line for line in lines if str(corpus.path(case)) in line]
        assert len(said) == 1, (case, said)  # once, though the split is also the dev split
        assert said[0].startswith(f"skipping {corpus.path(case)}: ")
    assert "(6 skipped: {'skipped_unreadable': 4, 'skipped_empty_transcript': 1" in bad_run.stdout
    # what the reader left out: counted in MLflow and said, the audio file without a line by name
    assert metrics["left_out_no_transcript"] == 1 and metrics["left_out_no_audio"] >= 1
    assert f"left out {corpus.path('no line')} has no transcript: " in bad_run.stdout


def test_unreadable_files_are_left_out_of_the_features_and_recorded_once_in_the_store(corpus: Corpus, tmp_path: Path):
    utts = [u for u in read_split(corpus.split) if u.file_id.startswith(CHAPTER)]
    features = FeatureExtractor(sample_rate=RATE, n_mfcc=13, n_mels=40, win_ms=25, hop_ms=10)
    first = SpeechDataset(utts, features)
    lengths = first.precompute()
    expected = [u.file_id for u in utts if u.file_id not in {corpus.file_id(c) for c in UNREADABLE}]
    assert [u.file_id for u in first.utterances] == expected and len(lengths) == len(first.labels) == len(expected)
    assert [m.split(": ")[0] for m in first.unreadable] == [str(corpus.path(c)) for c in UNREADABLE]
    folder = store_folder(tmp_path, features, utts)
    assert featurize(utts, features, folder).unreadable == len(UNREADABLE)
    recorded = [f for shard in folder.glob("*.json") for f in json.loads(shard.read_text())["failed"]]
    assert sorted(f["file_id"] for f in recorded) == sorted(corpus.file_id(c) for c in UNREADABLE)
    assert featurize(utts, features, folder).written == 0  # the store is complete: not tried again
    stored = SpeechDataset(utts, features)  # the same items left out, with the same messages, as in memory
    assert stored.use_store(open_store(folder, [u.file_id for u in utts])) == lengths
    assert stored.unreadable == first.unreadable and stored.utterances == first.utterances
    assert all(torch.equal(a[0], b[0]) for a, b in zip(stored, first, strict=True))


def test_lines_without_audio_and_audio_without_lines_are_not_utterances(corpus: Corpus):
    """The LibriSpeech layout allows a subset of a chapter's audio (the tests' short splits rely on it)."""
    ids = {u.file_id for u in read_split(corpus.split)}
    assert corpus.file_id("no audio") not in ids and corpus.file_id("no line") not in ids
    assert corpus.file_id("id alone") in ids and corpus.file_id("corrupt") in ids


def test_characters_outside_the_vocabulary_are_normalized_or_dropped(corpus: Corpus):
    # accents folded, 42 spelled out, comma, quotes and "!" dropped
    assert normalize(OUT_OF_VOCABULARY) == ("cafe naive forty two quoted resume", 4)
    utt = next(u for u in read_split(corpus.split) if u.file_id == corpus.file_id("out of vocabulary"))
    features = FeatureExtractor(sample_rate=RATE, n_mfcc=13, n_mels=40, win_ms=25, hop_ms=10)
    labels = SpeechDataset([utt], features).labels
    assert [list(ids) for ids in labels] == [encode("cafe naive forty two quoted resume")]


def test_silence_gives_zero_features_not_amplified_rounding_noise():
    features = FeatureExtractor(sample_rate=RATE, n_mfcc=13, n_mels=40, win_ms=25, hop_ms=10)
    for wave in (torch.zeros(RATE), torch.full((RATE,), 0.25)):  # digital silence, a DC offset
        feats = features(wave)
        assert feats.shape == (13, RATE // 160 + 1) and torch.equal(feats, torch.zeros_like(feats))
    speech = features(torch.from_numpy(sf.read(split_dir("test-clean") / "1089/134686/1089-134686-0000.flac",
                                               dtype="float32")[0]))
    assert speech.std(dim=-1).min() > 0.9  # real audio is normalized as before


# ---------------------------------------------------------------- single-item commands: one line each


def transcribe(*cases: str) -> Callable[[Corpus, BadRun], list[str]]:
    return lambda c, r: ["transcribe", "--model-uri", str(r.checkpoint),
                         *(str(c.long if k == "30 min" else c.path(k) if k in FILES else c.split / k) for k in cases)]


def validate(file_id: str | None = None, case: str = "") -> Callable[[Corpus, BadRun], list[str]]:
    return lambda c, r: ["validate", "--file_id", file_id or c.file_id(case), "--dataset", str(c.split)]


def message(case: str, what: str) -> Callable[[Corpus], str]:
    return lambda c: f"{c.path(case)}{what}"


def text(fragment: str) -> Callable[[Corpus], str]:
    return lambda c: fragment


# name: (`asr` arguments, exit code, what stderr (exit 1) or stdout (exit 0) must hold, stdout lines on exit 0)
CASES = {
    "30-minute file": (transcribe("30 min"), 0, text(""), 1),  # first: the longest, overlaps the rest
    "corrupt flac": (transcribe("corrupt"), 1, message("corrupt", ": cannot read audio, the file is corrupt"), 0),
    "truncated flac": (transcribe("truncated"), 1, message("truncated", ": cannot read audio"), 0),
    "zero-length wav": (transcribe("zero-length"), 1, message("zero-length", ": audio is too short (0.000 s"), 0),
    "text saved as .flac": (transcribe("not audio"), 1, message("not audio", ": cannot read audio, the file is "
                                                                "corrupt, truncated or not audio (Format not "
                                                                "recognised.)"), 0),
    "missing file": (transcribe("nope.flac"), 1, lambda c: f"{c.split / 'nope.flac'}: no such file", 0),
    "digital silence": (transcribe("silence"), 0, text(""), 1),
    "8, 44.1, 48 kHz, stereo": (transcribe("8 kHz", "44.1 kHz", "48 kHz stereo", "16 kHz stereo"), 0,
                                message("48 kHz stereo", "\t"), 4),
    "traversal ../../etc/passwd": (validate("../../etc/passwd"), 1, text("'../../etc/passwd': invalid file id"), 0),
    "traversal id/../x": (validate("1089-134686-0000/../x"), 1, text("invalid file id"), 0),
    "absolute path id": (validate("/etc/passwd"), 1, text("'/etc/passwd': invalid file id"), 0),
    "corrupt audio by id": (validate(case="corrupt"), 1, message("corrupt", ": cannot read audio"), 0),
    "id alone on its line": (validate(case="id alone"), 1,
                             text(f"{CHAPTER}-0009: its transcript has no letters to score against"), 0),
    "line without audio": (validate(case="no audio"), 1, text(f"{CHAPTER}-0010 is in "), 0),
    "audio without line": (validate(case="no line"), 1, message("no line", f" has no transcript: add a line "
                                                                          f"'{CHAPTER}-0011 TEXT' to "), 0),
    "odd folder name": (validate(case="out of vocabulary"), 0, text("target:    cafe naive forty two quoted resume"),
                        5),
    "evaluate a split with unreadable files": (  # skipped, counted, scored over the rest
        lambda c, r: ["evaluate", "--dataset", str(c.split), "--model_uri", str(r.checkpoint)], 0,
        text(f" utterances ({len(UNREADABLE)} unreadable, skipped; "), 2),
}


# Run as real `asr` processes (exit status, stderr and tracebacks as a user sees them): one case of each command, and
# the 30-minute file. The other cases check what the commands say, in this process (an `asr` process is seconds of
# start-up and imports before it reads anything).
IN_A_PROCESS = ("30-minute file", "corrupt flac", "corrupt audio by id", "evaluate a split with unreadable files")


def test_bad_inputs_to_commands(corpus: Corpus, bad_run: BadRun, tmp_path: Path):
    uri = sqlite_uri(bad_run.root)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the processes one by one, alongside the rest (2 CPU cores)
        processes = {name: run_cli_alongside(pool, asr_command() + CASES[name][0](corpus, bad_run), tmp_path, uri,
                                             threads=1) for name in IN_A_PROCESS}
        here = {name: run_cli_here(CASES[name][0](corpus, bad_run), tmp_path, uri)
                for name in CASES if name not in IN_A_PROCESS}
        results = {name: processes[name].result() if name in processes else here[name] for name in CASES}
    failures = []
    for name, proc in results.items():
        _, code, expected, lines = CASES[name]
        if code == 1 and (problem := one_line_error(proc)):
            failures.append(f"{name}: {problem}")
        elif code == 1 and expected(corpus) not in proc.stderr:
            failures.append(f"{name}: {proc.stderr!r} lacks {expected(corpus)!r}")
        elif code == 0 and (proc.returncode or expected(corpus) not in proc.stdout
                            or len(proc.stdout.splitlines()) != lines):
            failures.append(f"{name}: exit {proc.returncode}, {lines} lines holding {expected(corpus)!r} expected; "
                            f"stdout {proc.stdout[:300]!r}, stderr {proc.stderr[-500:]!r}")
    assert not failures, "\n".join(failures)
