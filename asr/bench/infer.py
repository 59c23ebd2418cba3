"""`asr bench infer`: inference speed of a trained model, written to BENCHMARKS.md.

Two numbers per decoder and precision, each measured in a fresh process:
  - real-time factor (wall seconds per audio second) of one 10-second recording, batch size 1, from waveform to
    text (features + model + decoding), the median of repeated runs after a warm-up;
  - throughput (audio seconds per wall second) and WER/CER over a whole split, batched as `asr evaluate` does,
    audio loading included.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

from asr import UserError
from asr.bench.report import in_fresh_process, write_section
from asr.hardware import cpu_name

SECTION = "infer"
CLIP_SECONDS = 10.0


@dataclass
class Setting:
    name: str           # row label
    decoder: str        # greedy or beam
    precision: str      # fp32, bf16 or int8
    lm: bool            # beam search with the LM (and its lexicon)


SETTINGS = (Setting("greedy", "greedy", "fp32", False), Setting("greedy", "greedy", "bf16", False),
            Setting("greedy", "greedy", "int8", False), Setting("beam", "beam", "fp32", False),
            Setting("beam+LM", "beam", "fp32", True), Setting("beam+LM", "beam", "int8", True))


def ten_second_clip(utts: list, sample_rate: int) -> torch.Tensor:
    """Real speech, exactly CLIP_SECONDS long: the split's utterances end to end, cut."""
    from asr.audio import load_audio

    need, waves = int(CLIP_SECONDS * sample_rate), []
    for u in utts:
        waves.append(load_audio(u.path, sample_rate))
        if sum(w.numel() for w in waves) >= need:
            return torch.cat(waves)[:need]
    raise UserError(f"the split holds less than {CLIP_SECONDS:.0f} s of audio")


def _measure(model_uri: str, data: str, setting: Setting, lm: str, beam_size: int, repeats: int) -> dict:
    from asr.config import DecodeConfig
    from asr.evaluation.evaluate import score_split, utterances_of
    from asr.loading import load_transcriber
    from asr.tracking.store import setup_uri

    setup_uri()
    cfg = DecodeConfig(decoder=setting.decoder, precision=setting.precision, lm=lm if setting.lm else "",
                       beam_size=beam_size)
    transcriber = load_transcriber(model_uri, cfg)
    utts = utterances_of([data])
    clip = ten_second_clip(utts, transcriber.sample_rate)
    transcriber.transcribe([clip])  # warm-up: first-call allocations, decoder set-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        transcriber.transcribe([clip])
        times.append(time.perf_counter() - start)
    s = score_split(transcriber, utts)
    return {"setting": setting.name, "precision": setting.precision, "rtf": statistics.median(times) / CLIP_SECONDS,
            "audio_s_per_s": s.audio_seconds / s.seconds, "wer": s.wer, "cer": s.cer, "utterances": s.utterances,
            "audio": s.audio_seconds, "threads": torch.get_num_threads()}


def run(model_uri: str, data: str, lm: str, beam_size: int, repeats: int, out: Path, section: str = SECTION,
        say=print) -> list[dict]:
    if not Path(data).is_dir():
        raise UserError(f"benchmark data not found: {data} (run `make demo` or `asr data synth`, or pass --data)")
    if lm and not Path(lm).is_file():
        raise UserError(f"--lm {lm}: no such file (build one with `asr lm build`)")
    results = []
    for setting in SETTINGS:
        if setting.lm and not lm:
            continue
        say(f"{setting.name} / {setting.precision} ...")
        r = in_fresh_process(_measure, model_uri, data, setting, lm, beam_size, repeats)
        say(f"  RTF {r['rtf']:.4f}, {r['audio_s_per_s']:.0f} audio-s/s on the split, WER {r['wer']:.3f} "
            f"CER {r['cer']:.3f}")
        results.append(r)
    write_section(out, section, render(results, model_uri, data, lm, beam_size, repeats))
    say(f"written to {out}")
    return results


def render(results: list[dict], model_uri: str, data: str, lm: str, beam_size: int, repeats: int) -> str:
    greedy = next(r for r in results if r["setting"] == "greedy" and r["precision"] == "fp32")
    lines = [
        f"## Inference speed and decoders on `{data}` (`asr bench infer`)",
        "",
        f"{date.today()}, {cpu_name()}, {multiprocessing.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{results[0]['threads']} threads. Model `{model_uri}`. RTF: one {CLIP_SECONDS:.0f}-second recording, "
        f"batch size 1, waveform to text, median of {repeats} runs. Throughput and error rates: all "
        f"{results[0]['utterances']} utterances ({results[0]['audio'] / 60:.1f} min) of `{data}`, batched, audio "
        f"loading included. Beam size {beam_size}; LM `{lm or 'none'}` with the lexicon of its words. Each row "
        "in a fresh process.",
        "",
        "| decoder | precision | RTF (batch 1) | vs greedy fp32 | audio-s/s (split) | WER | CER |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['setting']} | {r['precision']} | {r['rtf']:.4f} | {r['rtf'] / greedy['rtf']:.1f}x "
                     f"| {r['audio_s_per_s']:.0f} | {r['wer']:.3f} | {r['cer']:.3f} |")
    return "\n".join(lines) + "\n"
