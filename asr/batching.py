"""Batching by length and padding, shared by training (asr.data.dataset, asr.training) and inference
(asr.transcribe): both batch utterances of similar length and pad them to the longest."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import torch


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n_mfcc, T_max) features zero-padded at the end, and their true lengths (B,), from (n_mfcc, T_i) tensors."""
    padded = torch.nn.utils.rnn.pad_sequence([f.T for f in feats], batch_first=True).transpose(1, 2)
    return padded, torch.tensor([f.shape[-1] for f in feats])


def plan_batches(lengths: list[int], items: Iterable[int], *, max_items: int, max_frames: int, seed: int | None,
                 bucket_width: float = 0.1) -> list[list[int]]:
    """Length-bucketed batches of `items` holding at most `max_items` utterances and, when `max_frames` is set,
    at most `max_frames` padded frames (longest item x count), so padding stays small and long utterances
    cannot blow memory.

    Seeded: items are shuffled within buckets of ~10% length spread and the batch order is shuffled, so
    batches differ every epoch. Unseeded: shortest first (SortaGrad, and deterministic evaluation).
    """
    order = sorted(items, key=lambda i: (lengths[i], i))
    if seed is not None:
        rng = random.Random(seed)
        rng.shuffle(order)
        order.sort(key=lambda i: int(math.log(max(lengths[i], 1)) / math.log1p(bucket_width)))
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        longest_with = max(longest, lengths[i])
        if batch and (len(batch) >= max_items or (max_frames and longest_with * (len(batch) + 1) > max_frames)):
            batches.append(batch)
            batch, longest_with = [], lengths[i]
        batch.append(i)
        longest = longest_with
    if batch:
        batches.append(batch)
    if seed is not None:
        rng.shuffle(batches)
    return batches
