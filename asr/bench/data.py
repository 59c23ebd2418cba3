"""`asr bench data`: how the data path grows with the corpus, written to BENCHMARKS.md.

One synthetic corpus of the smallest asked size is generated in the LibriSpeech layout (asr.data.synth) in
--work_dir, and reused from there. Every size is a prefix of the corpus that repeats its training split without
end, each pass under new speaker ids (links to the same audio, so new file ids), linked into a split folder of its
own that `asr train` could read. Repeating keeps corpus generation (~10 s per hour here) out of the benchmark's
time: indexing, decoding and featurizing a linked file costs what a fresh one does, and none of the measured
quantities depends on what is said.
For each size, each measurement in a fresh process: the time to index the split (read_corpus), the time to
featurize it into a fresh feature store with 1 and with 2 processes, and a training process that opens the store
and trains for --seconds (its peak RSS, VmHWM, and its anonymous resident memory, RssAnon, at the end; its
steady-state audio-s/s). The same training from features held in RAM (`--feature_cache memory`) is the baseline,
run only where they fit in memory with room to spare.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from datetime import date
from pathlib import Path

import torch

from asr import UserError
from asr.bench.report import in_fresh_process, peak_rss_mb, rss_anon_mb, write_section
from asr.hardware import cpu_name

SECTION = "data"
FULL_HOURS, RANKS = 960, 8
MEMORY_HEADROOM = 4  # the in-memory baseline runs where RAM holds this many times the size of the features


def corpus(work_dir: Path, hours: float, seed: int, say=print) -> Path:
    """The training split of the synthetic corpus of `hours` in work_dir (written, or reused when its config is
    the same). Raises UserError (SynthError) when espeak-ng is missing or work_dir cannot be written."""
    from asr.data.synth.corpus import synthesize_corpus
    from asr.settings import SynthConfig

    root = work_dir / f"corpus-{hours:g}h-seed{seed}"
    say(f"corpus of {hours:g} h in {root} (written once, then reused) ...")
    started = time.perf_counter()
    try:
        synthesize_corpus(SynthConfig(root=str(root), seed=seed, train_minutes=hours * 60, dev_minutes=0.05,
                                      test_minutes=0.05, workers=max(1, os.cpu_count() or 1)), progress=False)
    except OSError as e:
        raise UserError(f"--work_dir {work_dir}: cannot write the corpus there: {e.strerror or e}") from None
    say(f"  ready in {time.perf_counter() - started:.0f} s")
    return root / "train"


REPEAT_SPEAKER_STEP = 100_000  # pass r of the repeated corpus: speaker ids + r x this (synthetic ids are 9001 up)


def prefix_split(train: Path, hours: float, folder: Path) -> tuple[Path, float]:
    """A split folder of the first `hours` of audio of `train` repeated without end: its utterances in file id order,
    and in pass r (from 0) every speaker id raised by r x REPEAT_SPEAKER_STEP. Chapter folders of links to the
    audio files, with their transcript lines. Returns the folder and its hours."""
    import soundfile as sf

    from asr.data.dataset import read_split

    distinct = sorted(read_split(train), key=lambda u: u.file_id)
    durations = [sf.info(str(u.path)).duration for u in distinct]
    kept: dict[Path, list[tuple[str, Path, str]]] = {}
    seconds, n = 0.0, 0
    while seconds < hours * 3600:
        u, r = distinct[n % len(distinct)], n // len(distinct)
        speaker, chapter, utt = u.file_id.split("-")
        speaker = str(int(speaker) + r * REPEAT_SPEAKER_STEP)
        kept.setdefault(Path(speaker) / chapter, []).append((f"{speaker}-{chapter}-{utt}", u.path, u.transcript))
        seconds += durations[n % len(distinct)]
        n += 1
    shutil.rmtree(folder, ignore_errors=True)
    for chapter, utts in kept.items():
        out = folder / chapter
        out.mkdir(parents=True)
        for file_id, audio, _ in utts:
            (out / f"{file_id}{audio.suffix}").symlink_to(audio.resolve())
        (out / f"{chapter.parent.name}-{chapter.name}.trans.txt").write_text(
            "".join(f"{file_id} {transcript}\n" for file_id, _, transcript in utts))
    return folder, seconds / 3600


def _index(split: str) -> dict:
    """In a fresh process: seconds to read the split's utterance list."""
    from asr.data.dataset import read_corpus

    started = time.perf_counter()
    n = len(read_corpus([split]).utterances)
    return {"index_s": time.perf_counter() - started, "utterances": n}


def _featurize(split: str, folder: str, workers: int) -> dict:
    """In a fresh process: seconds to featurize the split into an empty store with `workers` processes, and the
    store's size on disk."""
    from asr.config import FeatureConfig
    from asr.data.dataset import read_split
    from asr.data.feature_store import featurize
    from asr.features import FeatureExtractor

    utts = read_split(split)
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    featurize(utts, FeatureExtractor.from_config(FeatureConfig()), Path(folder), (0, 1), workers)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": sum(p.stat().st_size for p in Path(folder).iterdir())}


def _train(split: str, store: str, seconds: float, in_memory: bool) -> dict:
    """In a fresh process: the training loop's own units on the split for `seconds`, reading features from the
    store folder (read per utterance), or `in_memory`, copied from it into RAM first, as `--feature_cache memory` holds
    them. The largest batch goes first, so that every size's peak includes the same worst batch. Steady-state
    audio-s/s, peak and anonymous resident memory, MB."""
    from asr.bench.train import _real_path
    from asr.data.dataset import SpeechDataset, read_split
    from asr.data.feature_store import open_store
    from asr.features import FeatureExtractor
    from asr.model import SpeechModel
    from asr.settings import TrainConfig
    from asr.text import VOCAB
    from asr.training.batches import intra_op_threads

    cfg = TrainConfig()
    torch.set_num_threads(intra_op_threads(cfg, 0))
    torch.manual_seed(0)
    model = SpeechModel.from_config(cfg.recognizer(), len(VOCAB))
    dataset = SpeechDataset(read_split(split), FeatureExtractor.from_config(cfg.features))

    def from_store(d: SpeechDataset) -> list[int]:
        lengths = d.use_store(open_store(Path(store), [u.file_id for u in d.utterances]))
        if in_memory:
            d.hold_in_memory()
        return lengths

    stats, wall, *_ = _real_path(cfg, model, dataset, seconds, from_store, worst_batch_first=True)
    return {"audio_s_per_s": stats.audio_frames * cfg.features.hop_ms / 1000 / wall, "steps": stats.steps,
            "peak_mb": peak_rss_mb(), "anon_mb": rss_anon_mb()}


def fits_in_memory(store_bytes: int) -> bool:
    import psutil

    return store_bytes * MEMORY_HEADROOM < psutil.virtual_memory().available


def measure(split: Path, hours: float, work_dir: Path, seconds: float, say=print) -> dict:
    """Every measurement of one size, each in a fresh process."""
    r = {"hours": hours, **in_fresh_process(_index, str(split))}
    for workers in (1, 2):
        store = work_dir / "stores" / f"{hours:g}h-{workers}p"
        f = in_fresh_process(_featurize, str(split), str(store), workers)
        r[f"featurize_{workers}p_s"], r["store_bytes"] = f["seconds"], f["bytes"]
    say(f"  {r['utterances']} utterances indexed in {r['index_s']:.3g} s; featurized in "
        f"{r['featurize_1p_s']:.1f} s (1 process), {r['featurize_2p_s']:.1f} s (2)")
    r["store"] = in_fresh_process(_train, str(split), str(store), seconds, False)
    r["memory"] = (in_fresh_process(_train, str(split), str(store), seconds, True) if fits_in_memory(r["store_bytes"])
                   else None)
    for mode in ("store", "memory"):
        if r[mode]:
            m = r[mode]
            say(f"  training from {mode}: {m['audio_s_per_s']:.1f} audio-s/s ({m['steps']} steps), "
                f"peak RSS {m['peak_mb']:.0f} MB, "
                f"RssAnon {m['anon_mb']:.0f} MB")
    return r


def run(hours: list[float], work_dir: str, seconds: float, seed: int, out: Path, say=print) -> list[dict]:
    """Generates (or reuses) the corpus, measures every size, prints the table and replaces the `data` section of
    `out`. Returns the measurements, smallest size first."""
    folder = Path(work_dir).expanduser()
    hours = sorted(hours)
    train = corpus(folder, hours[0], seed, say)
    results = []
    for h in hours:
        split, actual = prefix_split(train, h, folder / "prefixes" / f"{h:g}h" / "train")
        say(f"{h:g} h ({actual:.2f} h of audio) ...")
        results.append(measure(split, actual, folder, seconds, say))
    for line in table(results) + [""] + extrapolation(results):
        say(line)
    write_section(out, SECTION, render(results, seconds, seed))
    say(f"written to {out}; the corpus and stores stay in {folder} for the next run (delete it when done)")
    return results


def table(results: list[dict]) -> list[str]:
    lines = ["| hours | utterances | index (s) | featurize, 1 process (s) | featurize, 2 processes (s) | store (MB) "
             "| train from store: audio-s/s | peak RSS (MB) | RssAnon (MB) | from memory: audio-s/s | peak RSS (MB) "
             "| RssAnon (MB) |", "|" + "---|" * 12]
    for r in results:
        s, m = r["store"], r["memory"]
        mem = f"{m['audio_s_per_s']:.1f} | {m['peak_mb']:.0f} | {m['anon_mb']:.0f}" if m else "- (does not fit) | - | -"
        lines.append(f"| {r['hours']:.2f} | {r['utterances']} | {r['index_s']:.3g} | {r['featurize_1p_s']:.1f} "
                     f"| {r['featurize_2p_s']:.1f} | {r['store_bytes'] / 1e6:.1f} | {s['audio_s_per_s']:.1f} "
                     f"| {s['peak_mb']:.0f} | {s['anon_mb']:.0f} | {mem} |")
    return lines


def extrapolation(results: list[dict]) -> list[str]:
    """The full 960 hours on RANKS ranks, as arithmetic from the largest size's measured rates."""
    r = results[-1]
    h, peak = r["hours"], r["store"]["peak_mb"]
    per_hour_1p, per_hour_2p = r["featurize_1p_s"] / h, r["featurize_2p_s"] / h
    disk_mb = r["store_bytes"] / 1e6 / h
    peaks = [x["store"]["peak_mb"] for x in results]
    first, top = peaks[0], max(peaks)
    growth = max(0.0, (peak - first) / (h - results[0]["hours"])) if h > results[0]["hours"] else 0.0
    # within 10% from the smallest to the largest size is flat: a slope fitted to that noise would not extrapolate
    flat = top <= 1.1 * min(peaks)
    per_rank = top if flat else peak + growth * (FULL_HOURS - h)
    rule = (f"flat (all sizes within 10% of {min(peaks):.0f} MB): the largest peak, {top:.0f} MB" if flat else
            f"growing {growth:+.1f} MB/h from the smallest size: {peak:.0f} + {growth:.1f} x ({FULL_HOURS} - {h:.2f})"
            f" = {per_rank:.0f} MB")
    return [
        f"Extrapolation to {FULL_HOURS} h on {RANKS} ranks, from the {h:.2f} h row:",
        f"- featurize: {per_hour_1p:.0f} s/h with 1 process ({per_hour_2p:.0f} s/h with 2, "
        f"{per_hour_1p / per_hour_2p:.2f}x); {FULL_HOURS} h x {per_hour_1p:.0f} s/h / {RANKS} processes = "
        f"{FULL_HOURS * per_hour_1p / RANKS / 60:.0f} min",
        f"- disk: {disk_mb:.1f} MB/h x {FULL_HOURS} h = {disk_mb * FULL_HOURS / 1e3:.1f} GB (one copy, shared by "
        "the ranks of a machine)",
        f"- peak RSS per rank training from the store: {peak:.0f} MB, {rule} per rank at {FULL_HOURS} h, x {RANKS} "
        f"ranks = {per_rank * RANKS / 1024:.1f} GB",
        f"- from memory instead: every rank holds the features ({disk_mb:.1f} MB/h x {FULL_HOURS} h = "
        f"{disk_mb * FULL_HOURS / 1e3:.1f} GB) x {RANKS} ranks = {disk_mb * FULL_HOURS * RANKS / 1e3:.0f} GB, and "
        f"each featurizes all {FULL_HOURS} h",
    ]


def render(results: list[dict], seconds: float, seed: int) -> str:
    hours = ", ".join(f"{r['hours']:.2f}" for r in results)
    return "\n".join([
        "## Growth of the data path with the corpus (`asr bench data`)",
        "",
        f"{date.today()}, {cpu_name()}, {multiprocessing.cpu_count()} CPUs, torch {torch.__version__}. One "
        f"synthetic corpus of {results[0]['hours']:.2f} hours (seed {seed}) in the LibriSpeech layout, repeated "
        f"under new speaker ids for the larger sizes; the sizes ({hours} hours) are prefixes of that one sequence. "
        "Each number from a fresh process: index = reading the split's utterance list; featurize = computing an "
        "empty feature store with 1 and 2 loader processes; training = the default model, the training loop's own "
        f"units, the batch with the most padded frames first (untimed), then {seconds:g} s of steady state after 2 "
        "warm-up steps, features read from the store per utterance or copied from it into RAM first (as "
        "`--feature_cache memory` holds them; only where they fit). Peak RSS is VmHWM; RssAnon is the process's "
        "anonymous (non-file) resident memory at the end.",
        "",
        *table(results),
        "",
        *extrapolation(results),
    ]) + "\n"
