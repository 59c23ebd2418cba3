"""`asr bench stream`: streaming recognition (asr.streaming) speed and latency, written to BENCHMARKS.md and JSON.

All measured in one fresh process with one torch thread (what one core does), the model loaded once, after a
warm-up stream. For each chunk size, every utterance is streamed through a `StreamingRecognizer` chunk by chunk:
  - real-time factor: compute seconds (every `accept` and the `finish`) per audio second;
  - latency from a chunk's arrival to its partial text: chunks arrive in real time (a chunk arrives when its last
    sample has been spoken) and are processed one after another with the compute times measured, so a model slower
    than real time queues them up and its latency grows; the median and 95th percentile over all chunks;
  - latency from the end of speech (the last chunk's arrival) to the final text (`finish` returned), per utterance;
  - CPU time per concurrent stream: --streams recognizers fed round-robin in one thread over the same audio,
    process CPU seconds per audio second per stream, and its inverse: the streams one core keeps in real time.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

from asr import UserError
from asr.atomic import atomic_path
from asr.bench.report import in_fresh_process, write_section
from asr.hardware import cpu_name

SECTION = "stream"
WARM_UP_CHUNK_MS = 100.0


def chunks(wave: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`wave` cut into consecutive pieces of `size` samples (the last one shorter)."""
    return list(wave.split(size))


def stream_timed(recognizer, pieces: list[torch.Tensor]) -> tuple[list[float], float, str]:
    """Streams `pieces` through a fresh stream of `recognizer`: the compute seconds of each `accept`, of the
    `finish`, and the finals' text joined with spaces."""
    recognizer.reset()
    times, finals = [], []
    for piece in pieces:
        start = time.perf_counter()
        update = recognizer.accept(piece)
        times.append(time.perf_counter() - start)
        finals += update.finals
    start = time.perf_counter()
    finals += recognizer.finish().finals
    return times, time.perf_counter() - start, " ".join(s.text for s in finals)


def real_time_latencies(chunk_s: float, audio_s: float, times: list[float], finish: float
                        ) -> tuple[list[float], float]:
    """Chunk i (of `chunk_s` seconds) arrives at min((i + 1) * chunk_s, audio_s) and is processed, for times[i]
    seconds, once it has arrived and the one before is done. Returns each chunk's latency (arrival to its partial
    text) and the final's (the last arrival to the end of `finish`), seconds."""
    done, latencies, arrive = 0.0, [], 0.0
    for i, t in enumerate(times):
        arrive = min((i + 1) * chunk_s, audio_s)
        done = max(arrive, done) + t
        latencies.append(done - arrive)
    return latencies, done + finish - arrive


def concurrent_cpu(recognizers: list, pieces: list[torch.Tensor]) -> float:
    """Process CPU seconds to feed `pieces` to every recognizer round-robin (each chunk to each stream in turn,
    as a server interleaves its streams) and finish them."""
    for r in recognizers:
        r.reset()
    start = time.process_time()
    for piece in pieces:
        for r in recognizers:
            r.accept(piece)
    for r in recognizers:
        r.finish()
    return time.process_time() - start


def _measure(model_uri: str, dataset: str, utterances: int, chunk_ms: list[float], streams: int,
             endpoint_ms: float) -> dict:
    from asr.audio import load_audio
    from asr.evaluation.evaluate import utterances_of
    from asr.loading import load_transcriber
    from asr.streaming import StreamingRecognizer
    from asr.tracking.store import setup_uri

    torch.set_num_threads(1)
    setup_uri()
    transcriber = load_transcriber(model_uri)
    rate = transcriber.sample_rate
    utts = sorted(utterances_of([dataset]), key=lambda u: u.file_id)[:utterances]
    if not utts:
        raise UserError(f"{dataset}: no utterances to stream")
    waves = [load_audio(u.path, rate) for u in utts]
    audio_s = sum(w.numel() for w in waves) / rate
    recognizers = [StreamingRecognizer(transcriber, endpoint_ms=endpoint_ms) for _ in range(streams)]
    stream_timed(recognizers[0], chunks(waves[0], int(WARM_UP_CHUNK_MS / 1000 * rate)))  # warm-up
    rows = []
    for ms in chunk_ms:
        size = max(1, int(ms / 1000 * rate))
        compute, partial, final, cpu, texts = 0.0, [], [], 0.0, []
        for wave in waves:
            pieces = chunks(wave, size)
            times, finish, text = stream_timed(recognizers[0], pieces)
            compute += sum(times) + finish
            lat, fin = real_time_latencies(size / rate, wave.numel() / rate, times, finish)
            partial += lat
            final.append(fin)
            texts.append(text)
            cpu += concurrent_cpu(recognizers, pieces)
        per_stream = cpu / (streams * audio_s)
        rows.append({"chunk_ms": ms, "rtf": compute / audio_s,
                     "partial_latency_ms_p50": 1000 * float(np.median(partial)),
                     "partial_latency_ms_p95": 1000 * float(np.percentile(partial, 95)),
                     "final_latency_ms_p50": 1000 * float(np.median(final)),
                     "final_latency_ms_p95": 1000 * float(np.percentile(final, 95)),
                     "cpu_s_per_audio_s_per_stream": per_stream, "streams_per_core": 1 / max(per_stream, 1e-12),
                     "chunks": len(partial), "words": sum(len(t.split()) for t in texts)})
    return {"date": str(date.today()), "cpu": cpu_name(), "cpus": multiprocessing.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "model_uri": model_uri,
            "dataset": dataset, "utterances": [u.file_id for u in utts], "audio_seconds": audio_s,
            "streams": streams, "endpoint_ms": endpoint_ms, "mode": recognizers[0].mode,
            "model_latency_ms": 1000 * recognizers[0].latency_seconds, "rows": rows}


def run(model_uri: str, dataset: str, utterances: int, chunk_ms: list[float], streams: int, endpoint_ms: float,
        out: Path, json_out: Path, say: Callable[[str], None] = print) -> dict:
    """Measures (in a fresh process), prints the table, writes the `stream` section of `out` and the numbers as
    JSON to `json_out`; returns them."""
    if not Path(dataset).is_dir():
        raise UserError(f"benchmark data not found: {dataset} (pass --dataset, a LibriSpeech split folder)")
    say(f"streaming {utterances} utterance(s) of {dataset} in chunks of {', '.join(f'{c:g}' for c in chunk_ms)} ms ...")
    result = in_fresh_process(_measure, model_uri, dataset, utterances, chunk_ms, streams, endpoint_ms)
    table = render(result)
    say(table)
    write_section(out, SECTION, table)
    with atomic_path(json_out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    say(f"written to {out} and {json_out}")
    return result


def render(r: dict) -> str:
    lines = [
        "## Streaming recognition (`asr bench stream`)",
        "",
        f"{r['date']}, {r['cpu']}, {r['cpus']} CPUs, torch {r['torch']}, {r['threads']} thread. Model "
        f"`{r['model_uri']}`; {len(r['utterances'])} utterance(s) of `{r['dataset']}` ({r['audio_seconds']:.1f} s "
        f"of audio), endpoint after {r['endpoint_ms']:g} ms of pause; the recognizer runs the model in "
        f"{r['mode']} mode, and a frame's output needs {r['model_latency_ms']:.0f} ms of audio "
        "after it (the model's own latency, added to the measured latencies below by a live source). RTF: compute "
        "seconds per audio second. "
        "Partial latency: from a chunk's arrival (chunks arriving in real time, processed in turn) to its partial "
        "text, over all chunks. Final latency: from the last chunk's arrival to the final text, per utterance. "
        f"CPU: {r['streams']} stream(s) fed round-robin in one thread; streams per core = 1 / that CPU time, "
        "the streams one core keeps up with in real time.",
        "",
        "| chunk (ms) | RTF | partial latency p50 / p95 (ms) | final latency p50 / p95 (ms) "
        "| CPU s per audio s per stream | streams per core |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['chunk_ms']:g} | {row['rtf']:.4f} | {row['partial_latency_ms_p50']:.1f} / "
                     f"{row['partial_latency_ms_p95']:.1f} | {row['final_latency_ms_p50']:.1f} / "
                     f"{row['final_latency_ms_p95']:.1f} | {row['cpu_s_per_audio_s_per_stream']:.4f} "
                     f"| {row['streams_per_core']:.1f} |")
    return "\n".join(lines) + "\n"
