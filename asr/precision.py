"""Arithmetic precision: which autocast dtype a run gets, why, and the autocast context for it. Training and
inference both use these; weights and the CTC loss stay fp32 either way.

`--precision auto` on a CPU is decided by measurement (asr/precision_probe.py), not by CPU flags: whether bf16
autocast pays depends on the CPU's bf16 units *and* on the model's shape (this model's GRU recurrence stays fp32),
and CPUs with the same flags disagree (an AMD EPYC with AVX512_BF16 and no AMX ran bf16 matmuls 2x faster than fp32;
an Intel VM with the same flags ran them 0.6x as fast).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from asr import UserError
from asr.config import RecognizerConfig

# bf16 must save at least this share of the fp32 time: within the probe's noise, fp32 (exact, reproducible) wins.
MARGIN = 0.05
NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Decision:
    """The autocast dtype (None = fp32) a run computes in, and why: "asked", the GPU rule, or the probe's times."""
    dtype: torch.dtype | None
    why: str

    @property
    def name(self) -> str:
        return NAMES[self.dtype]

    def params(self) -> dict[str, str]:
        """The run's MLflow params saying what was decided and why."""
        return {"precision_used": self.name, "precision_probe": self.why}

    def describe(self) -> str:
        """For the start-up line: `fp32` when asked, else `bf16 (auto: fp32 41.2 ms, bf16 38.7 ms per step)`."""
        return self.name if self.why == "asked" else f"{self.name} (auto: {self.why})"


def bf16_wins(fp32_ms: float, bf16_ms: float, margin: float = MARGIN) -> bool:
    """Whether measured bf16 times (ms per step, any unit shared by both) beat fp32 by at least `margin` (a share of
    the fp32 time). A bf16 that failed or was not measured (inf, nan) never wins."""
    if not (math.isfinite(fp32_ms) and math.isfinite(bf16_ms)) or fp32_ms <= 0:
        return False
    return bf16_ms <= fp32_ms * (1 - margin)


def asked_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an explicit --precision (fp32, bf16, fp16); None = fp32. Raises UserError for fp16 on
    a CPU, ValueError for `auto` (see decide)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    raise ValueError(f"not an explicit precision: {precision!r}")


def gpu_rule(device: torch.device) -> Decision:
    """`auto` on a GPU: bf16 where the GPU computes in it (Ampere and later), else fp32; fp16 only when asked (it
    needs loss scaling, and bf16 does not)."""
    name = torch.cuda.get_device_name(device)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Decision(torch.bfloat16, f"{name} has bf16")
    return Decision(None, f"{name} has no bf16")


def decide(precision: str, device: torch.device, recognizer: RecognizerConfig, training: bool,
           batch: int = 8) -> Decision:
    """The autocast dtype for --precision on `device`, and why. `auto` on a CPU times the model `recognizer`
    describes (forward+backward when `training`, else forward only, on up to `batch` utterances) in fp32 and in
    bf16 autocast, and takes bf16 only if it is faster by MARGIN in steady times (too noisy: fp32); the times are
    cached per CPU, threads, torch version and model shape, so later runs decide in milliseconds. Raises UserError
    for fp16 on a CPU."""
    if precision != "auto":
        return Decision(asked_dtype(precision, device), "asked")
    if device.type == "cuda":
        return gpu_rule(device)
    from asr.precision_probe import probe  # the probe builds a model: asr.model imports the config, not this

    timing = probe(recognizer, training, batch)
    wins = timing.steady and bf16_wins(timing.fp32_ms, timing.bf16_ms)  # noisy times cannot justify leaving fp32
    return Decision(torch.bfloat16 if wins else None, timing.describe())


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """torch.autocast to `dtype` on `device`'s type, or a no-op for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
