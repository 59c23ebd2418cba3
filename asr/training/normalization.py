"""A streaming model's feature statistics (asr.model.SpeechModel.mean/std): the mean and standard deviation per
MFCC coefficient over the training set's un-augmented features, fitted once before training (not on a resume, nor
when fine-tuning: a fine-tuned model keeps its parent's, which its weights were trained with)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from asr.data.dataset import SpeechDataset
from asr.features import SILENT_STD
from asr.model import SpeechModel

MAX_UTTERANCES = 2000  # a fixed sample of this many training utterances at most: the statistics settle long before


def fit_statistics(model: SpeechModel, dataset: SpeechDataset, items: Sequence[int], seed: int = 0,
                   limit: int = MAX_UTTERANCES) -> dict[str, int]:
    """Sets `model`'s mean and std buffers (n_mfcc,) from the features of the training utterances `items` (a sample
    of `limit` of them, drawn with `seed`, when there are more); std is at least asr.features.SILENT_STD, so a
    coefficient that never varies is not blown up. Returns the counts, as MLflow params: feature_stats_utterances
    and feature_stats_frames. Every rank of a data-parallel run computes the same numbers from the same store."""
    picks = list(items) if len(items) <= limit else sorted(random.Random(seed).sample(list(items), limit))
    total = squares = None
    frames = 0
    for i in picks:
        feats = dataset.plain_features(i).double()  # (n_mfcc, T)
        total = feats.sum(1) if total is None else total + feats.sum(1)
        squares = (feats ** 2).sum(1) if squares is None else squares + (feats ** 2).sum(1)
        frames += feats.shape[1]
    if not frames:
        return {"feature_stats_utterances": 0, "feature_stats_frames": 0}
    mean = total / frames
    std = (squares / frames - mean ** 2).clamp(min=0).sqrt().clamp(min=SILENT_STD)
    with torch.no_grad():
        model.mean.copy_(mean.float())
        model.std.copy_(std.float())
    return {"feature_stats_utterances": len(picks), "feature_stats_frames": frames}
