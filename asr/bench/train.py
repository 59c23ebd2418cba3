"""`asr bench train`: training throughput of the real training path against a naive one, written to BENCHMARKS.md.

Every measurement runs in a fresh process, so thread settings, allocator state and peak memory (max RSS) belong
to that measurement alone. Throughput counts real (unpadded) audio seconds per wall-clock second, with the data
loader inside the timed loop. FLOP/s are counted with torch's FlopCounterMode on the executed (padded) batches
and compared with the machine's own measured matmul peak, fp32 and bf16.
"""

from __future__ import annotations

import multiprocessing
import random
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import soundfile as sf
import torch

from asr import UserError
from asr.bench.report import in_fresh_process, write_section
from asr.config import from_dict
from asr.hardware import cpu_name
from asr.settings import TrainConfig

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


PEAK_SECONDS = 3.0  # timed matmuls per dtype for the machine's peak; less when the measurements are shorter


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = PEAK_SECONDS) -> float:
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


def _peaks(seconds: float) -> dict[str, float]:
    """The fp32 and bf16 matmul peaks, each timed for `seconds`."""
    from asr.training.batches import intra_op_threads

    torch.set_num_threads(intra_op_threads(TrainConfig(), 0))
    return {"fp32": matmul_peak(torch.float32, seconds=seconds), "bf16": matmul_peak(torch.bfloat16, seconds=seconds)}


def _naive_collate(features):
    """Naive: audio decoded and featurized in the main process, inside collate, for every batch."""
    from asr.audio import load_audio
    from asr.data.dataset import collate

    def fn(items):
        return collate([(features(load_audio(u.path, features.mfcc.sample_rate)),
                         torch.tensor(labels, dtype=torch.long)) for u, labels in items])
    return fn


class _Clock:
    """Ends a measurement: the first WARMUP steps are not counted (the stats are reset after them), then it runs
    for `seconds` and at least 3 counted steps."""
    WARMUP = 2

    def __init__(self, seconds: float) -> None:
        self.seconds, self.warmup, self.steps, self.done = seconds, self.WARMUP, 0, False
        self.start = time.perf_counter()

    def after_step(self, *stats) -> bool:
        """Call after every optimizer step with the stats being counted; True once the measurement is done."""
        if self.warmup:
            self.warmup -= 1
            for s in stats:
                s.reset()  # what the warm-up steps took is not measured
            self.start = time.perf_counter()
            return False
        self.steps += 1
        self.done = time.perf_counter() - self.start > self.seconds and self.steps >= 3
        return self.done


def _real_path(cfg: TrainConfig, model, dataset, seconds: float, prepare=None, worst_batch_first: bool = False):
    """The training loop's own units, as `asr train` runs them: features computed once up front (or whatever
    `prepare(dataset)` does, returning the frame counts: e.g. opening a feature store), length-bucketed
    shuffled epochs, the configured precision and threads. With `worst_batch_first`, one untimed forward and
    backward pass of the batch with the most padded frames comes first (no optimizer step), so the peak memory
    does not depend on which batches the timed seconds draw. Returns (stats, wall seconds, autocast dtype,
    featurization seconds, a batch for FLOP counting)."""
    from asr.precision import decide
    from asr.training.batches import TrainData, epoch_batches, train_loader
    from asr.training.distributed import Context
    from asr.training.loop import EpochStats, build_trainer, forward_backward, train_one_epoch
    from asr.training.state import Progress

    cpu = torch.device("cpu")
    started = time.perf_counter()
    lengths = prepare(dataset) if prepare else dataset.precompute(cfg.data.workers)
    featurize_s = time.perf_counter() - started
    items = list(range(len(dataset)))
    data = TrainData(dataset.features, dataset, dataset, lengths, lengths, items, {}, 0)
    amp = decide(cfg.optim.precision, cpu, cfg.recognizer(), training=True, batch=cfg.optim.batch).dtype
    trainer = build_trainer(cfg, Context(0, 1, cpu), model, amp, total_steps=1_000_000)
    probe = next(iter(train_loader(dataset, [items[:cfg.optim.batch]], 0, cpu)))
    if worst_batch_first:
        worst = max(epoch_batches(cfg, lengths, items, 0, 1), key=lambda b: len(b) * max(lengths[i] for i in b))
        batch = next(iter(train_loader(dataset, [worst], 0, cpu)))
        forward_backward(model, batch, trainer.specaug, amp, cpu, trainer.scaler, 1.0 / len(worst))
        model.zero_grad(set_to_none=True)
    clock, total, pos = _Clock(seconds), EpochStats(), Progress(epoch=1)  # from epoch 1 on: shuffled, as most are
    while not clock.done:
        total.add(train_one_epoch(trainer, data, pos, lambda _, stats: clock.after_step(stats, total)))
        pos.epoch, pos.batch = pos.epoch + 1, 0
    return total, time.perf_counter() - clock.start, amp, featurize_s, probe


def _naive_path(cfg: TrainConfig, model, dataset, spec: Spec):
    """Per batch: audio decoded and featurized in the main process, random order, fp32, torch's default threads.
    Returns what _real_path does."""
    from asr.training.loop import EpochStats, forward_backward, optimizer_step, spec_augment

    cpu = torch.device("cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler, specaug = torch.amp.GradScaler("cpu", enabled=False), spec_augment(cfg)
    pairs = list(zip(dataset.utterances, dataset.labels, strict=True))
    collate = _naive_collate(dataset.features)
    probe = collate(pairs[:spec.naive_batch])
    clock, stats, epoch = _Clock(spec.seconds), EpochStats(), 0
    while True:
        order = list(range(len(pairs)))
        random.Random(epoch).shuffle(order)
        for i in range(0, len(order), spec.naive_batch):
            t0 = time.perf_counter()
            batch = collate([pairs[j] for j in order[i:i + spec.naive_batch]])
            t1 = time.perf_counter()
            loss = forward_backward(model, batch, specaug, None, cpu, scaler, weight=1.0 / batch["features"].shape[0])
            t2 = time.perf_counter()
            optimizer_step(model, optimizer, scheduler, scaler, cfg.optim.grad_clip, loss)
            for key, seconds in zip(stats.seconds, (t1 - t0, t2 - t1, time.perf_counter() - t2), strict=True):
                stats.seconds[key] += seconds
            stats.count(batch)
            stats.steps += 1
            if clock.after_step(stats):
                return stats, time.perf_counter() - clock.start, None, 0.0, probe
        epoch += 1


def _measure(spec: Spec) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from asr.data.dataset import SpeechDataset
    from asr.features import FeatureExtractor
    from asr.model import BiGRU, SpeechModel
    from asr.text import VOCAB
    from asr.training.batches import intra_op_threads
    from asr.training.loop import compute_loss

    cfg = from_dict(TrainConfig, {**CONFIGS[spec.config], **spec.overrides}, strict=True)
    if spec.path == "real":
        torch.set_num_threads(intra_op_threads(cfg, 0))
    torch.manual_seed(0)
    model = SpeechModel.from_config(cfg.recognizer(), len(VOCAB))
    for m in model.modules():
        if isinstance(m, BiGRU):
            m.fused_on_cpu = spec.path != "naive"  # this model's GRUs only: the class default stays as it is
    dataset = SpeechDataset(bench_utterances(spec.data, spec.utterances), FeatureExtractor.from_config(cfg.features))
    measure = _real_path(cfg, model, dataset, spec.seconds) if spec.path == "real" else \
        _naive_path(cfg, model, dataset, spec)
    stats, wall, amp, featurize_s, probe = measure
    # FLOPs of one forward+backward grow with padded frames x utterances: calibrate on one batch
    with FlopCounterMode(display=False) as counter:
        compute_loss(model, probe, amp, torch.device("cpu"))[0].backward()
    flops_per_frame = counter.get_total_flops() / probe["features"].shape[0] / probe["features"].shape[-1]
    return {
        **asdict(spec), "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "precision": str(amp).removeprefix("torch.") if amp else "fp32", "steps": stats.steps,
        "mean_batch": stats.utterances / stats.steps,
        "audio_s_per_s": stats.audio_frames * cfg.features.hop_ms / 1000 / wall,
        "padding": stats.padded_frames / stats.audio_frames - 1,
        "flops_per_s": flops_per_frame * stats.padded_frames / wall,
        "time_split": {k: v / wall for k, v in stats.seconds.items()}, "featurize_s": featurize_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_utterances(data: str, count: int) -> list:
    from asr.data.dataset import read_split

    utts = read_split(data)
    return sorted(random.Random(0).sample(utts, min(count, len(utts))), key=lambda u: u.file_id)


def real_mean_batch(spec: Spec) -> int:
    """Utterances per batch of the real path (from file headers), so the naive path gets the same batch size."""
    from asr.features import FeatureExtractor
    from asr.training.batches import epoch_batches

    cfg = from_dict(TrainConfig, {**CONFIGS[spec.config], **spec.overrides}, strict=True)
    fe = FeatureExtractor.from_config(cfg.features)
    utts = bench_utterances(spec.data, spec.utterances)
    lengths = [fe.num_frames(sf.info(str(u.path)).frames) for u in utts]
    batches = epoch_batches(cfg, lengths, list(range(len(utts))), 1, 1)
    return max(1, round(statistics.mean(len(b) for b in batches)))


def run(data: str, utterances: int, seconds: float, configs: list[str], out: Path, say=print) -> list[dict]:
    if not Path(data).is_dir():
        raise UserError(f"benchmark data not found: {data} (run `make demo` or `asr data synth`, or pass --data)")
    say("measuring matmul peak (fp32, bf16) ...")
    peaks = in_fresh_process(_peaks, min(PEAK_SECONDS, seconds))  # a quick run (--seconds 1) stays quick
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
              "length-bucketed batches, `--precision auto` (bf16 autocast only where a probe of the model measured it "
              "faster), intra-op threads set deliberately. "
              "*Naive*: the same model and utterances per batch, fp32, utterances in random order padded to the "
              "longest in their batch, features computed in the main process inside collate, no workers, torch's "
              "default threads, and torch's own `nn.GRU` kernels (same weights, same math: tested equal). "
              "*Naive, fused GRU*: the naive path with this project's GRU kernel, to separate what the kernel gives "
              "from what batching, caching and threads give. *padding*: padded frames computed per real frame, "
              "beyond 1.", ""]
    return "\n".join(lines)


