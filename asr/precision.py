"""Arithmetic precision: which autocast dtype a device gets, and the autocast context for it. Training and
inference both use these; weights and the CTC loss stay fp32 either way."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from asr import UserError


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --precision on `device`; None = fp32. `auto` gives bf16 where the hardware has bf16
    matrix units (AMX CPUs, Ampere+ GPUs): a CPU with AVX-512 BF16 but no AMX runs bf16 matmuls slower than fp32
    ones (measured: see BENCHMARKS.md). Raises UserError for fp16 on a CPU."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.cpu._is_amx_tile_supported() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """torch.autocast to `dtype` on `device`'s type, or a no-op for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
