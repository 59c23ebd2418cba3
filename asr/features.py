"""MFCC front end, shared by training and inference so both see identical features."""

from __future__ import annotations

import torch
import torchaudio

from asr.config import FeatureConfig, RecognizerConfig

# Per-utterance normalization: (mfcc - mean) / (std + NORM_EPSILON) over frames, std with Bessel's correction;
# a coefficient whose std is under SILENT_STD becomes 0. Exports describe it with these (asr.export).
NORM_EPSILON = 1e-5
SILENT_STD = 1e-3


class FeatureExtractor(torch.nn.Module):
    """Waveform -> per-utterance normalized MFCCs, shape (n_mfcc, frames).

    Mean/variance normalization per utterance removes much of the speaker and channel
    colouring, which matters when the held-out voices differ from the training ones.

    `causal=True` (the features of a streaming model, `ModelConfig.streaming`): un-normalized MFCCs whose dB scale
    is per element, 10 log10(max(power, 1e-10)), with no clamp against the utterance's loudest bin (torchaudio's
    top_db, which needs the whole utterance); the model normalizes them itself with the training set's statistics
    (`asr.model.SpeechModel.normalize`). Frame t depends on samples up to t * hop + n_fft / 2 only.
    """

    def __init__(self, *, sample_rate: int, n_mfcc: int, n_mels: int, win_ms: float, hop_ms: float,
                 causal: bool = False):
        super().__init__()
        self._settings = dict(sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms)
        self.causal = causal
        win = int(sample_rate * win_ms / 1000)
        self.hop = int(sample_rate * hop_ms / 1000)
        self.n_fft = 1 << (win - 1).bit_length()
        self.mfcc = self._mfcc(center=True)

    def _mfcc(self, center: bool) -> torchaudio.transforms.MFCC:
        s = self._settings
        mfcc = torchaudio.transforms.MFCC(
            sample_rate=s["sample_rate"], n_mfcc=s["n_mfcc"],
            melkwargs={"n_fft": self.n_fft, "win_length": int(s["sample_rate"] * s["win_ms"] / 1000),
                       "hop_length": self.hop, "n_mels": s["n_mels"], "center": center},
        )
        if self.causal:
            mfcc.top_db = mfcc.amplitude_to_DB.top_db = None
        return mfcc

    def uncentered(self) -> torchaudio.transforms.MFCC:
        """The same MFCC without the STFT's centering (no padding: frame k covers samples k * hop to
        k * hop + n_fft), for features computed piece by piece from a sample buffer (asr.streaming)."""
        return self._mfcc(center=False)

    @classmethod
    def from_config(cls, cfg: FeatureConfig, *, causal: bool = False) -> FeatureExtractor:
        """The features of `cfg`; causal=True for a streaming model (see the class docstring)."""
        return cls(sample_rate=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_mels=cfg.n_mels, win_ms=cfg.win_ms,
                   hop_ms=cfg.hop_ms, causal=causal)

    @classmethod
    def for_recognizer(cls, cfg: RecognizerConfig) -> FeatureExtractor:
        """The features the model of `cfg` hears: causal for a streaming model."""
        return cls.from_config(cfg.features, causal=cfg.model.streaming)

    def settings(self) -> dict[str, float]:
        """What the features depend on (keys the feature store)."""
        return {**self._settings, "version": 1, **({"causal": 1} if self.causal else {})}

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of `num_samples` (centered STFT)."""
        return num_samples // self.hop + 1

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.mfcc(wave)
        if self.causal:
            return feats
        mean = feats.mean(dim=-1, keepdim=True)
        std = feats.std(dim=-1, keepdim=True) if feats.shape[-1] > 1 else torch.ones_like(mean)
        # A constant coefficient (digital silence, a DC offset) carries nothing; dividing its float rounding noise
        # by ~1e-5 would turn it into a large, meaningless value (~12 for silence), so it becomes 0.
        return ((feats - mean) / (std + NORM_EPSILON)).masked_fill(std < SILENT_STD, 0.0)
