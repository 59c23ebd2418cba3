"""`asr bench lm`: what a large word 4-gram LM costs the beam search decoder, written to BENCHMARKS.md.

The LM is a synthetic ARPA file of the asked size (asr.bench.synthetic_arpa), kept in --work_dir and reused. Each
measurement runs in a fresh process, so its memory is its own: the time to load the LM the way a Transcriber does
(asr.decoding.loaded_lm: its words, the lexicon spelling them, KenLM; then make_decoder: torchaudio's decoder with
its lexicon trie), the memory that adds (resident after loading and peak, each minus a baseline process that
imports the same libraries and decodes without an LM), and the time of a first and a second beam search decode of
one 10-second utterance's emission with it: the load is paid once per process, each request only the decode.

The emission is synthetic too (no acoustic model needed): a sentence of the LM's own words as CTC spikes on a
blank background with Gaussian noise, at the default model's 33 frames per second.
ARPA only: KenLM's binary format would load faster, but nothing installed here can write one (flashlight-text
bundles KenLM's loader, not its build_binary).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr import UserError
from asr.bench.report import in_fresh_process, peak_rss_mb, write_section
from asr.hardware import cpu_name

SECTION = "lm"
UTTERANCE_SECONDS = 10.0
COMMON_WORDS = 2000  # the emission's words are drawn from the LM's first (most frequent) words
NO_BINARY = ("ARPA only: a KenLM binary would load faster, but nothing installed can write one (flashlight-text "
             "bundles KenLM's loader, not build_binary; the kenlm Python module is not a dependency)")


def synthetic_lm(work_dir: Path, size_mb: float, seed: int, say=print) -> tuple[Path, float | None]:
    """The synthetic 4-gram ARPA file of this size and seed in work_dir: reused when there, else written.
    Returns its path and the seconds writing it took (None when reused). Raises UserError when work_dir cannot
    hold it."""
    path = work_dir / f"synthetic-4gram-{size_mb:g}mb-seed{seed}.arpa"
    if path.is_file():
        say(f"reusing {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return path, None
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(work_dir).free
    except OSError as e:
        raise UserError(f"--work_dir {work_dir}: cannot use it for the synthetic LM: {e.strerror or e}") from None
    if free < size_mb * 1e6 * 1.1:
        raise UserError(f"--work_dir {work_dir} has {free / 1e6:.0f} MB free, too little for a {size_mb:g} MB LM: "
                        "pass another --work_dir or a smaller --size_mb")
    from asr.bench.synthetic_arpa import write_synthetic_arpa

    say(f"writing a {size_mb:g} MB synthetic 4-gram LM to {path} ...")
    start = time.perf_counter()
    try:
        write_synthetic_arpa(path, size_mb, seed)
    except OSError as e:
        raise UserError(f"cannot write the synthetic LM {path}: {e.strerror or e}") from None
    seconds = time.perf_counter() - start
    say(f"  {path.stat().st_size / 1e6:.0f} MB written in {seconds:.0f} s")
    return path, seconds


def spelled_emission(words: list[str], seed: int) -> tuple[torch.Tensor, str]:
    """A (frames, classes) log-probability emission of UTTERANCE_SECONDS at the default model's frame rate that
    spells a sentence of `words` (drawn from the first COMMON_WORDS): one spike per character, blank between,
    Gaussian noise everywhere. Returns it and the sentence."""
    from asr.config import FeatureConfig, ModelConfig
    from asr.text import BLANK, VOCAB, encode

    frames = round(UTTERANCE_SECONDS * 1000 / FeatureConfig().hop_ms / ModelConfig().time_stride)
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    while len(" ".join(chosen)) < frames * 0.4:  # about 12 characters a second, as read speech
        chosen.append(words[rng.integers(min(len(words), COMMON_WORDS))])
    sentence = " ".join(chosen)
    ids = encode(sentence)
    logits = rng.normal(0.0, 1.5, (frames, len(VOCAB)))
    logits[:, BLANK] += 6.0
    spikes = np.linspace(1, frames - 1, len(ids), endpoint=False).astype(int)
    logits[spikes, BLANK] -= 6.0
    logits[spikes, ids] += 8.0
    return torch.log_softmax(torch.tensor(logits, dtype=torch.float32), dim=-1), sentence


def _measure(lm: str, emission: torch.Tensor, beam_size: int) -> dict:
    """In a fresh process: load the LM (none: the baseline) into a beam search decoder as a Transcriber does, then
    decode `emission` twice. Seconds (wall, and CPU for the loads: a shared machine stretches the wall time), and
    resident and peak memory in MB."""
    import psutil

    from asr.config import DecodeConfig
    from asr.decoding import loaded_lm, make_decoder

    cfg = DecodeConfig(decoder="beam", lm=lm, beam_size=beam_size)
    _, lm_s, lm_cpu_s = _timed(lambda: loaded_lm(cfg) if lm else None)
    decoder, decoder_s, decoder_cpu_s = _timed(lambda: make_decoder(cfg))  # the LM from the process's cache
    resident = psutil.Process().memory_info().rss / 2**20
    lengths = torch.tensor([len(emission)])
    (_, first_s, _), (text, second_s, _) = (_timed(lambda: decoder(emission[None], lengths)[0]) for _ in range(2))
    return {"lm_s": lm_s, "lm_cpu_s": lm_cpu_s, "decoder_s": decoder_s, "decoder_cpu_s": decoder_cpu_s,
            "resident_mb": resident, "peak_mb": peak_rss_mb(), "first_s": first_s, "second_s": second_s,
            "text": text, "threads": torch.get_num_threads()}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn()'s result, and the wall and CPU seconds it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run(size_mb: float, seed: int, work_dir: str, beam_size: int, out: Path, say=print) -> dict:
    """Writes (or reuses) the synthetic LM, measures the baseline and the LM each in a fresh process, prints
    the numbers and replaces the `lm` section of `out`. Returns the LM's measurement with the baseline's under
    "baseline"."""
    from asr.lm import arpa_counts, arpa_words
    from asr.metrics import wer

    folder = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "asr-bench-lm"
    lm, write_s = synthetic_lm(folder, size_mb, seed, say)
    emission, sentence = spelled_emission(arpa_words(lm), seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    say("baseline: beam search without an LM ...")
    base = in_fresh_process(_measure, "", emission, beam_size)
    say(f"ARPA LM ({lm.stat().st_size / 1e6:.0f} MB) ...")
    r = in_fresh_process(_measure, str(lm), emission, beam_size)
    r.update(baseline=base, wer=wer([sentence], [r["text"]]), counts=arpa_counts(lm), size_mb=lm.stat().st_size / 1e6,
             write_s=write_s, path=str(lm), load=load, frames=len(emission))
    for line in table(r):
        say(line)
    say(NO_BINARY)
    write_section(out, SECTION, render(r, beam_size, seed))
    say(f"written to {out}; the LM stays in {lm} for the next run (delete it when done)")
    return r


def table(r: dict) -> list[str]:
    """The Markdown table of a run's measurement: the baseline row, then the LM's, memory net of the baseline."""
    b = r["baseline"]
    counts = "/".join(f"{c:,}" for c in r["counts"].values())
    return [
        "| LM | n-grams (1/2/3/4) | LM load, s (CPU s) | decoder build, s (CPU s) | memory after load (GB) "
        "| peak memory (GB) | first decode (s) | second decode (s) | WER |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("none (baseline: beam search, no lexicon)", "-", b, f"{b['resident_mb'] / 1024:.2f} (absolute)",
             f"{b['peak_mb'] / 1024:.2f} (absolute)", "-"),
        _row(f"ARPA, {r['size_mb']:.0f} MB", counts, r, f"{(r['resident_mb'] - b['resident_mb']) / 1024:+.2f}",
             f"{(r['peak_mb'] - b['peak_mb']) / 1024:+.2f}", f"{r['wer']:.3f}"),
    ]


def _row(name: str, counts: str, m: dict, resident: str, peak: str, wer: str) -> str:
    load = f"{m['lm_s']:.2f} ({m['lm_cpu_s']:.2f})" if counts != "-" else "-"
    return (f"| {name} | {counts} | {load} | {m['decoder_s']:.2f} ({m['decoder_cpu_s']:.2f}) | {resident} | {peak} "
            f"| {m['first_s']:.3f} | {m['second_s']:.3f} | {wer} |")


def render(r: dict, beam_size: int, seed: int) -> str:
    load = f", load average {r['load']:.1f} at the start" if r["load"] is not None else ""
    lines = [
        "## A large word 4-gram LM in the decoder (`asr bench lm`)",
        "",
        f"{date.today()}, {cpu_name()}, {multiprocessing.cpu_count()} CPUs{load}, torch {torch.__version__}, "
        f"{r['threads']} threads. A synthetic 4-gram ARPA LM of {r['size_mb']:.0f} MB (seed {seed}; LibriSpeech's "
        f"shape: a {r['counts'][1] - 3:,}-word vocabulary, lmplz's n-gram proportions), loaded as a Transcriber "
        "loads its LM, once per process: its words, the lexicon spelling them and KenLM (LM load), then "
        "torchaudio's decoder and its lexicon trie (decoder build). Memory: what the LM adds to a process "
        "(resident after loading, and peak), net of a baseline process that imports the same libraries and "
        f"decodes without an LM. Decodes: one {UTTERANCE_SECONDS:.0f}-second utterance ({r['frames']} frames, a "
        f"synthetic emission spelling the LM's words), beam size {beam_size}, first and second call. Each row in a "
        f"fresh process. {NO_BINARY}.",
        "",
        *table(r),
    ]
    return "\n".join(lines) + "\n"
