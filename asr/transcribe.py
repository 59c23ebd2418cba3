"""Inference: waveforms -> text with a trained checkpoint (the path MLflow's pyfunc model serves)."""

from __future__ import annotations

from pathlib import Path

import torch

from asr.checkpoint import load_checkpoint
from asr.config import TrainConfig
from asr.decoding import greedy_decode
from asr.features import FeatureExtractor
from asr.model import SpeechModel


class Transcriber:
    def __init__(self, cfg: TrainConfig, model: SpeechModel):
        self.cfg = cfg
        self.model = model.eval()
        self.features = FeatureExtractor.from_config(cfg)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Transcriber:
        return cls(*load_checkpoint(path))

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @torch.inference_mode()
    def transcribe(self, waves: list[torch.Tensor]) -> list[str]:
        """Mono waveforms at `sample_rate` -> one transcript each (lower case, greedy CTC)."""
        feats = [self.features(w) for w in waves]
        lengths = torch.tensor([f.shape[-1] for f in feats])
        batch = torch.nn.utils.rnn.pad_sequence([f.T for f in feats], batch_first=True).transpose(1, 2)
        log_probs, out_lengths = self.model(batch, lengths)
        return greedy_decode(log_probs, out_lengths)
