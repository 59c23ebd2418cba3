"""CTC decoding of the model's per-frame log-probabilities into text."""

from __future__ import annotations

import torch

from asr.text import BLANK, decode


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Best path: argmax per frame, merge repeats, drop blanks. log_probs is (B, T, C)."""
    best = log_probs.argmax(dim=-1).cpu()
    texts = []
    for seq, n in zip(best, lengths.tolist(), strict=True):
        seq = torch.unique_consecutive(seq[:n]).tolist()
        texts.append(" ".join(decode([i for i in seq if i != BLANK]).split()))
    return texts
