"""Audio loading: any file soundfile reads, mixed down to mono and resampled to the model's rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr import UserError

SAMPLE_RATE = 16000
MIN_SECONDS = 0.02  # shorter clips cannot fill one 512-point analysis window at 16 kHz


class AudioError(UserError):
    """An audio file that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Returns a float32 mono waveform in [-1, 1] at `sample_rate`."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 -- soundfile raises several types for unreadable files
        raise AudioError(f"{path}: cannot read audio ({_first_line(e)})") from None
    return to_mono_16k(data, rate, sample_rate, name=str(path))


def to_mono_16k(data: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> torch.Tensor:
    """(samples, channels) or (samples,) array at `rate` -> mono tensor at `sample_rate`."""
    if data.shape[0] < MIN_SECONDS * rate:
        raise AudioError(f"{name}: audio is too short ({data.shape[0] / rate:.3f} s; at least {MIN_SECONDS} s needed)")
    wave = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if wave.ndim == 2:
        wave = wave.mean(dim=1)
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
