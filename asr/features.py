"""MFCC front end, shared by training and inference so both see identical features."""

from __future__ import annotations

import torch
import torchaudio

from asr.config import FeatureConfig

# Per-utterance normalization: (mfcc - mean) / (std + NORM_EPSILON) over frames, std with Bessel's correction;
# a coefficient whose std is under SILENT_STD becomes 0. Exports describe it with these (asr.export).
NORM_EPSILON = 1e-5
SILENT_STD = 1e-3


class FeatureExtractor(torch.nn.Module):
    """Waveform -> per-utterance normalized MFCCs, shape (n_mfcc, frames).

    Mean/variance normalization per utterance removes much of the speaker and channel
    colouring, which matters when the held-out voices differ from the training ones.
    """

    def __init__(self, *, sample_rate: int, n_mfcc: int, n_mels: int, win_ms: float, hop_ms: float):
        super().__init__()
        self._settings = dict(sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms)
        win = int(sample_rate * win_ms / 1000)
        self.hop = int(sample_rate * hop_ms / 1000)
        n_fft = 1 << (win - 1).bit_length()
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=sample_rate, n_mfcc=n_mfcc,
            melkwargs={"n_fft": n_fft, "win_length": win, "hop_length": self.hop, "n_mels": n_mels},
        )

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> FeatureExtractor:
        return cls(sample_rate=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_mels=cfg.n_mels, win_ms=cfg.win_ms,
                   hop_ms=cfg.hop_ms)

    def settings(self) -> dict[str, float]:
        """What the features depend on (keys the feature store)."""
        return {**self._settings, "version": 1}

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of `num_samples` (centered STFT)."""
        return num_samples // self.hop + 1

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.mfcc(wave)
        mean = feats.mean(dim=-1, keepdim=True)
        std = feats.std(dim=-1, keepdim=True) if feats.shape[-1] > 1 else torch.ones_like(mean)
        # A constant coefficient (digital silence, a DC offset) carries nothing; dividing its float rounding noise
        # by ~1e-5 would turn it into a large, meaningless value (~12 for silence), so it becomes 0.
        return ((feats - mean) / (std + NORM_EPSILON)).masked_fill(std < SILENT_STD, 0.0)
