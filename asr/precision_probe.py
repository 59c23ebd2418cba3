"""The probe behind `--precision auto` on a CPU: the model's own step timed in fp32 and in bf16 autocast, cached.

A model of the run's shape (asr.model.SpeechModel from its RecognizerConfig) runs a synthetic batch of realistic
size (TRAINING_BATCH / INFERENCE_BATCH): forward+backward of the CTC loss for training, forward only for inference.
One warm-up pair is not counted; then fp32 and bf16 steps alternate (each pair in turn order, so neither always runs
on a warmer cache) and each dtype's median counts. The global RNG is left as it was, so a run's weights do not depend
on whether the probe ran or its result was cached.

The result is cached in $XDG_CACHE_HOME/asr/precision.json (default ~/.cache/asr), keyed by everything that changes
it: CPU model, logical CPUs and torch threads, torch version, the model shape and batch, training or inference.
An unreadable or corrupt cache is ignored and rewritten.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from asr.atomic import atomic_path
from asr.config import RecognizerConfig, to_dict

VERSION = 1                   # part of every cache key: a changed probe measures again
TRAINING_BATCH = (8, 4.0)     # (most utterances, seconds each): a mid-size batch of LibriSpeech-length utterances
INFERENCE_BATCH = (4, 8.0)    # a few pieces of a recording, as asr.transcribe batches them
BUDGET_S = 1.0                # time for the counted steps, both dtypes together (warm-up not included)
REPEATS = (3, 7)              # fewest and most counted steps per dtype
DEADLINE_S = 4.0              # counting stops after this, even short of REPEATS[0]
EMULATED = 3.0                # bf16 this many times slower than fp32 after the warm-up: stop, fp32 it is
NOT_CACHED = "noisy, not cached"  # the note on such a probe
NOISY = 0.5                   # steps of one dtype spread over this share of their median (or fewer than REPEATS[0]
                              # of them): decide, but do not cache


@dataclass
class Timing:
    """Median milliseconds per step (training) or forward (inference) of each dtype; inf = bf16 does not run."""
    fp32_ms: float
    bf16_ms: float
    training: bool
    repeats: int              # counted steps per dtype
    note: str = ""            # why measuring stopped early, or NOT_CACHED
    cached: bool = False

    @property
    def steady(self) -> bool:
        """False for times too few or too spread to trust (other processes competing for the cores)."""
        return self.note != NOT_CACHED

    def describe(self) -> str:
        """e.g. `fp32 41.2 ms, bf16 38.7 ms per step (cached)`: the run's precision_probe param."""
        unit = "step" if self.training else "forward"
        bf16 = f"bf16 {self.bf16_ms:.1f} ms" if math.isfinite(self.bf16_ms) else "bf16 does not run"
        notes = [n for n in (self.note, "cached" if self.cached else "") if n]
        return f"fp32 {self.fp32_ms:.1f} ms, {bf16} per {unit}" + (f" ({'; '.join(notes)})" if notes else "")


def cache_file() -> Path:
    """$XDG_CACHE_HOME/asr/precision.json; ~/.cache when the variable is unset or not absolute (the XDG spec)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "asr" / "precision.json"


def probe_key(recognizer: RecognizerConfig, training: bool, utterances: int, seconds: float) -> str:
    """What the timing depends on, as one string."""
    from asr.hardware import cpu_name

    shape = json.dumps(to_dict(recognizer), sort_keys=True)
    return (f"v{VERSION} | {cpu_name()} | {os.cpu_count()} CPUs, {torch.get_num_threads()} threads | torch "
            f"{torch.__version__} | {'training' if training else 'inference'} {utterances} x {seconds:g} s | {shape}")


def probe(recognizer: RecognizerConfig, training: bool, batch: int = TRAINING_BATCH[0]) -> Timing:
    """The cached timing for this CPU and model, or a new measurement (then cached). `batch` caps the utterances
    per synthetic batch (a run with --batch 2 is timed on 2)."""
    utterances, seconds = TRAINING_BATCH if training else INFERENCE_BATCH
    utterances = max(1, min(utterances, batch))
    key, path = probe_key(recognizer, training, utterances, seconds), cache_file()
    entries = read_cache(path)
    if key in entries:
        try:
            return Timing(**{**entries[key], "cached": True})
        except TypeError:
            pass  # an entry of another layout: measure again
    timing = measure(recognizer, training, utterances, seconds)
    if not timing.steady:
        return timing  # a loaded machine's times: good for this run's decision at best, not for the next run's
    entries[key] = {k: v for k, v in asdict(timing).items() if k != "cached"}
    try:
        write_cache(path, entries)
    except OSError:
        pass  # a read-only home: decide anyway, measure again next time
    return timing


def read_cache(path: Path) -> dict[str, dict]:
    """The cached timings by key; {} for a missing, unreadable or corrupt file."""
    try:
        entries = json.loads(path.read_text()).get("entries")
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def write_cache(path: Path, entries: dict[str, dict]) -> None:
    """Writes the cache whole or not at all (two runs probing at once: the last one's file wins)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"version": VERSION, "entries": entries}, indent=1))


def measure(recognizer: RecognizerConfig, training: bool, utterances: int, seconds: float) -> Timing:
    """Times fp32 and bf16 autocast steps of a fresh model of `recognizer`'s shape on a random batch of
    `utterances` x `seconds` (see the module docstring). Global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        step = _step(recognizer, training, utterances, seconds)
        try:
            step(torch.bfloat16)
        except RuntimeError as e:  # a CPU or build without bf16 kernels for some op
            fp32 = _timed(step, None)
            return Timing(fp32 * 1000, math.inf, training, 1, f"bf16 failed: {str(e).splitlines()[0][:80]}")
        step(None)
        return _interleaved(step, training)


def _interleaved(step, training: bool) -> Timing:
    """Counted fp32 and bf16 steps in pairs, alternating which runs first: as many pairs as fit in BUDGET_S within
    REPEATS, fewer once DEADLINE_S has passed (a loaded or slow machine: then not cached), two when bf16 is
    EMULATED in both."""
    times: dict[torch.dtype | None, list[float]] = {None: [], torch.bfloat16: []}
    started = time.perf_counter()
    for i in range(REPEATS[1]):
        for dtype in ((None, torch.bfloat16) if i % 2 == 0 else (torch.bfloat16, None)):
            times[dtype].append(_timed(step, dtype))
        if i == 1 and min(times[torch.bfloat16]) > EMULATED * max(times[None]):
            return _timing(times, training, "bf16 emulated: stopped after two steps")
        spent = time.perf_counter() - started
        if spent > DEADLINE_S or (i + 1 >= REPEATS[0] and spent * (i + 2) / (i + 1) > BUDGET_S):
            break
    trusted = len(times[None]) >= REPEATS[0] and not any(map(noisy, times.values()))
    return _timing(times, training, "" if trusted else NOT_CACHED)


def noisy(seconds: list[float]) -> bool:
    """Whether repeated timings of one step spread too widely to trust (other processes competing for the cores)."""
    return len(seconds) > 1 and max(seconds) - min(seconds) > NOISY * statistics.median(seconds)


def _timing(times: dict[torch.dtype | None, list[float]], training: bool, note: str) -> Timing:
    return Timing(statistics.median(times[None]) * 1000, statistics.median(times[torch.bfloat16]) * 1000, training,
                  len(times[None]), note)


def _timed(step, dtype: torch.dtype | None) -> float:
    start = time.perf_counter()
    step(dtype)
    return time.perf_counter() - start


def _step(recognizer: RecognizerConfig, training: bool, utterances: int, seconds: float):
    """A function running one step of a new model on one random batch in a given autocast dtype (None = fp32)."""
    from asr.model import SpeechModel, ctc_loss_sum
    from asr.precision import autocast
    from asr.text import VOCAB

    cpu = torch.device("cpu")
    model = SpeechModel.from_config(recognizer, len(VOCAB)).train(training)
    frames = int(seconds * 1000 / recognizer.features.hop_ms)
    features = torch.randn(utterances, recognizer.features.n_mfcc, frames)
    lengths = torch.full((utterances,), frames)
    chars = max(1, int(seconds * 15))  # LibriSpeech reads at ~15 characters a second
    labels = {"labels": torch.randint(1, len(VOCAB), (utterances, chars)),
              "label_lengths": torch.full((utterances,), chars)}

    def run(dtype: torch.dtype | None) -> None:
        if not training:
            with torch.inference_mode(), autocast(cpu, dtype):
                model(features, lengths)
            return
        with autocast(cpu, dtype):
            log_probs, out_lengths = model(features, lengths)
        ctc_loss_sum(log_probs, out_lengths, labels, cpu).backward()
        model.zero_grad(set_to_none=True)

    return run
