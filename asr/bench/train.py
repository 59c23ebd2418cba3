"""`asr bench train`: training throughput of the real training path against a naive one, written to BENCHMARKS.md.

Every measurement runs in a fresh process, so thread settings, allocator state and peak memory (max RSS) belong
to that measurement alone. Throughput counts real (unpadded) audio seconds per wall-clock second, with the data
loader inside the timed loop. FLOP/s are counted with torch's FlopCounterMode on the executed (padded) batches
and compared with the machine's own measured matmul peak, fp32 and bf16.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import platform
import random
import re
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import soundfile as sf
import torch

from asr import UserError
from asr.atomic import atomic_path
from asr.config import TrainConfig

# The spine's first default: the classic DeepSpeech2-tutorial proportions at ~3.5 M parameters.
CLASSIC = dict(n_mfcc=40, cnn_layers=2, cnn_channels=32, rnn_layers=3, rnn_dim=256, dropout=0.1, freq_mask=8,
               time_mask=20)
CONFIGS = {"default": {}, "classic": CLASSIC}
SECTION = "train"
PATHS = ("real", "naive, fused GRU", "naive")


@dataclass
class Spec:
    config: str
    path: str                  # "real", "naive" or "naive, fused GRU"
    data: str
    utterances: int
    seconds: float
    naive_batch: int = 16      # utterances per naive batch: the real path's mean
    overrides: dict = field(default_factory=dict)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of a large square matmul: the most this machine's cores give a dense kernel."""
    torch.manual_seed(0)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def _peaks() -> dict[str, float]:
    from asr.training.train import intra_op_threads

    torch.set_num_threads(intra_op_threads(TrainConfig(), 0))
    return {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}


def _naive_collate(features):
    """Naive: audio decoded and featurized in the main process, inside collate, for every batch."""
    from asr.audio import load_audio
    from asr.data.dataset import collate

    def fn(items):
        return collate([(features(load_audio(u.path, features.mfcc.sample_rate)),
                         torch.tensor(labels, dtype=torch.long)) for u, labels in items])
    return fn


def _measure(spec: Spec) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from asr.data.dataset import SpeechDataset
    from asr.features import FeatureExtractor
    from asr.model import BiGRU, SpeechModel
    from asr.precision import autocast_dtype
    from asr.text import VOCAB
    from asr.training.train import (
        epoch_batches,
        forward_backward,
        intra_op_threads,
        optimizer_step,
        spec_augment,
        train_loader,
    )

    cfg = TrainConfig(**{**CONFIGS[spec.config], **spec.overrides})
    real = spec.path == "real"
    BiGRU.fused_on_cpu = spec.path != "naive"
    if real:
        torch.set_num_threads(intra_op_threads(cfg, 0))
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    utts = bench_utterances(spec.data, spec.utterances)
    features = FeatureExtractor.from_config(cfg)
    model = SpeechModel.from_config(cfg, len(VOCAB))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    specaug = spec_augment(cfg)
    dataset = SpeechDataset(utts, features)
    started = time.perf_counter()
    if real:
        lengths = dataset.precompute(cfg.workers)
        amp = autocast_dtype(cfg.precision, cpu)
    else:
        lengths = [features.num_frames(sf.info(str(u.path)).frames) for u in utts]
        amp = None
    featurize_s = time.perf_counter() - started

    def batches_for(epoch: int) -> list[list[int]]:
        if real:
            return epoch_batches(cfg, lengths, list(range(len(utts))), epoch + 1, 1)
        order = list(range(len(utts)))
        random.Random(epoch).shuffle(order)
        return [order[i:i + spec.naive_batch] for i in range(0, len(order), spec.naive_batch)]

    def loader_for(epoch: int):
        if real:
            return train_loader(dataset, batches_for(epoch), 0, cpu)
        pairs = list(zip(utts, dataset.labels, strict=True))
        return torch.utils.data.DataLoader(pairs, batch_sampler=batches_for(epoch), collate_fn=_naive_collate(features))

    # FLOPs of one forward+backward grow with padded frames x utterances: calibrate on one batch
    probe = next(iter(loader_for(0)))
    with FlopCounterMode(display=False) as counter:
        forward_backward(model, probe, specaug, amp, cpu, scaler, weight=1.0)
    flops_per_frame = counter.get_total_flops() / probe["features"].shape[0] / probe["features"].shape[-1]
    optimizer.zero_grad(set_to_none=True)

    model.train()
    times = {"load": 0.0, "forward+backward": 0.0, "optimizer": 0.0}
    audio_frames = padded_frames = steps = utts_seen = 0
    epoch, start = 0, time.perf_counter()
    warmup = 2
    while True:
        loaded = iter(loader_for(epoch))
        while True:
            t0 = time.perf_counter()
            batch = next(loaded, None)
            if batch is None:
                break
            t1 = time.perf_counter()
            loss = forward_backward(model, batch, specaug, amp, cpu, scaler, weight=1.0 / batch["features"].shape[0])
            t2 = time.perf_counter()
            optimizer_step(model, optimizer, scheduler, scaler, cfg.grad_clip, loss)
            t3 = time.perf_counter()
            if warmup:
                warmup -= 1
                start = time.perf_counter()
                continue
            times["load"] += t1 - t0
            times["forward+backward"] += t2 - t1
            times["optimizer"] += t3 - t2
            steps += 1
            utts_seen += batch["features"].shape[0]
            audio_frames += int(batch["feature_lengths"].sum())
            padded_frames += batch["features"].shape[0] * batch["features"].shape[-1]
            if time.perf_counter() - start > spec.seconds and steps >= 3:
                break
        if time.perf_counter() - start > spec.seconds and steps >= 3:
            break
        epoch += 1
    wall = time.perf_counter() - start
    return {
        **asdict(spec), "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "precision": str(amp).removeprefix("torch.") if amp else "fp32", "steps": steps,
        "mean_batch": utts_seen / steps, "audio_s_per_s": audio_frames * cfg.hop_ms / 1000 / wall,
        "padding": padded_frames / audio_frames - 1, "flops_per_s": flops_per_frame * padded_frames / wall,
        "time_split": {k: v / wall for k, v in times.items()}, "featurize_s": featurize_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_utterances(data: str, count: int) -> list:
    from asr.data.dataset import read_split

    utts = read_split(data)
    return sorted(random.Random(0).sample(utts, min(count, len(utts))), key=lambda u: u.file_id)


def real_mean_batch(spec: Spec) -> int:
    """Utterances per batch of the real path (from file headers), so the naive path gets the same batch size."""
    from asr.features import FeatureExtractor
    from asr.training.train import epoch_batches

    cfg = TrainConfig(**{**CONFIGS[spec.config], **spec.overrides})
    fe = FeatureExtractor.from_config(cfg)
    utts = bench_utterances(spec.data, spec.utterances)
    lengths = [fe.num_frames(sf.info(str(u.path)).frames) for u in utts]
    batches = epoch_batches(cfg, lengths, list(range(len(utts))), 1, 1)
    return max(1, round(statistics.mean(len(b) for b in batches)))


def in_fresh_process(fn, *args):
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run(data: str, utterances: int, seconds: float, configs: list[str], out: Path, say=print) -> list[dict]:
    if not Path(data).is_dir():
        raise UserError(f"benchmark data not found: {data} (run `make demo` or `asr data synth`, or pass --data)")
    say("measuring matmul peak (fp32, bf16) ...")
    peaks = in_fresh_process(_peaks)
    say(f"  fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    results = []
    for name in configs:
        spec = Spec(name, "real", data, utterances, seconds)
        spec.naive_batch = real_mean_batch(spec)
        for path in PATHS:
            say(f"{name} / {path} path ({seconds:.0f} s) ...")
            r = in_fresh_process(_measure, Spec(**{**asdict(spec), "path": path}))
            results.append(r)
            say(f"  {r['audio_s_per_s']:.1f} audio-s/s, {r['flops_per_s'] / 1e9:.1f} GFLOP/s, "
                f"padding {r['padding']:.0%}, peak RSS {r['peak_rss_mb']:.0f} MB")
    write_section(out, SECTION, render(results, peaks, data, seconds))
    say(f"written to {out}")
    return results


def render(results: list[dict], peaks: dict[str, float], data: str, seconds: float) -> str:
    by = {(r["config"], r["path"]): r for r in results}
    lines = [
        "## Training throughput (`asr bench train`)",
        "",
        f"{date.today()}, {cpu_name()}, {multiprocessing.cpu_count()} CPUs, torch {torch.__version__}. "
        f"{results[0]['utterances']} utterances of `{data}`, {seconds:.0f} s of steady-state training per row "
        "(after 2 warm-up steps), each row in a fresh process. Machine matmul peak (2048x2048): "
        f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
        f"({peaks['bf16'] / peaks['fp32']:.1f}x).",
        "",
        "| config | params | path | precision | threads | utts/batch | padding | audio-s/s | vs naive "
        "| GFLOP/s | % fp32 peak | % bf16 peak | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        naive = by.get((r["config"], "naive"))
        ratio = f"{r['audio_s_per_s'] / naive['audio_s_per_s']:.2f}x" if naive and r["path"] != "naive" else ""
        ratio = f"**{ratio}**" if r["path"] == "real" else ratio
        lines.append(
            f"| {r['config']} | {r['parameters'] / 1e6:.2f} M | {r['path']} | {r['precision']} | {r['threads']} "
            f"| {r['mean_batch']:.1f} | {r['padding']:.0%} | {r['audio_s_per_s']:.1f} | {ratio} "
            f"| {r['flops_per_s'] / 1e9:.1f} | {r['flops_per_s'] / peaks['fp32']:.0%} "
            f"| {r['flops_per_s'] / peaks['bf16']:.0%} | {r['peak_rss_mb']:.0f} MB |")
    lines += ["", "Where the wall-clock time goes (share of the timed loop):", "",
              "| config | path | data loading | forward+backward | optimizer |", "|---|---|---|---|---|"]
    for r in results:
        t = r["time_split"]
        lines.append(f"| {r['config']} | {r['path']} | {t['load']:.0%} | {t['forward+backward']:.0%} "
                     f"| {t['optimizer']:.0%} |")
    real = by[(results[0]["config"], "real")]
    lines += ["", "*Real*: the training loop's own code and this project's fused CPU GRU kernel (asr/rnn.py); "
              f"features computed once up front (took {real['featurize_s']:.1f} s here) and served from memory, "
              "length-bucketed batches, bf16 autocast only where the CPU has AMX, intra-op threads set deliberately. "
              "*Naive*: the same model and utterances per batch, fp32, utterances in random order padded to the "
              "longest in their batch, features computed in the main process inside collate, no workers, torch's "
              "default threads, and torch's own `nn.GRU` kernels (same weights, same math: tested equal). "
              "*Naive, fused GRU*: the naive path with this project's GRU kernel, to separate what the kernel gives "
              "from what batching, caching and threads give. *padding*: padded frames computed per real frame, "
              "beyond 1.", ""]
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str) -> None:
    """Replaces (or appends) one benchmark's section of BENCHMARKS.md, leaving the others alone."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nNumbers written by the project's own scripts.\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with atomic_path(path) as tmp:  # a crash mid-write must not cost the other sections' numbers
        tmp.write_text(text)
