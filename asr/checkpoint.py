"""Checkpoints: config + weights in one file, loadable without unpickling arbitrary objects."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from asr.config import TrainConfig, from_dict, to_dict
from asr.model import SpeechModel
from asr.text import VOCAB


def save_checkpoint(path: Path, cfg: TrainConfig, model: SpeechModel) -> Path:
    """Writes atomically (temp file, then rename) so a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": to_dict(cfg), "vocab": list(VOCAB), "model": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[TrainConfig, SpeechModel]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if tuple(state["vocab"]) != VOCAB:
        raise ValueError(f"{path}: checkpoint vocabulary differs from this version's; it cannot be decoded")
    cfg = from_dict(TrainConfig, state["config"])
    model = SpeechModel.from_config(cfg, len(VOCAB))
    model.load_state_dict(state["model"])
    return cfg, model.eval()
