"""Audio loading: any file soundfile reads, mixed down to mono and resampled to the model's rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr import UserError, first_line

SAMPLE_RATE = 16000
MIN_SECONDS = 0.02  # shorter clips cannot fill one 512-point analysis window at 16 kHz


class AudioError(UserError):
    """An audio file that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Returns a float32 mono waveform in [-1, 1] at `sample_rate`."""
    if not Path(path).is_file():  # libsndfile would only say "System error."
        raise AudioError(f"{path}: no such file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 -- soundfile raises several types for unreadable files
        detail = first_line(e).replace(f"Error opening {str(path)!r}: ", "")  # the path is said once already
        raise AudioError(f"{path}: cannot read audio, the file is corrupt, truncated or not audio ({detail})"
                         ) from None
    return to_mono_16k(data, rate, sample_rate, name=str(path))


def to_mono_16k(data: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> torch.Tensor:
    """(samples, channels) or (samples,) array at `rate` -> mono tensor at `sample_rate`. Every way audio enters
    (files, the served model's base64 and samples, training data) passes here. Raises AudioError, naming `name`,
    for audio too short to featurize or holding NaN or infinite samples (float WAVs can: they would be
    transcribed as silence)."""
    if data.shape[0] < MIN_SECONDS * rate:
        raise AudioError(f"{name}: audio is too short ({data.shape[0] / rate:.3f} s; at least {MIN_SECONDS} s needed)")
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise AudioError(f"{name}: {bad} sample{'s' * (bad != 1)} not finite (NaN or infinite); the audio is corrupt")
    wave = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if wave.ndim == 2:
        wave = wave.mean(dim=1)
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def quiet_cut_points(wave: torch.Tensor, sample_rate: int, max_seconds: float) -> list[int]:
    """Sample offsets that cut `wave` into pieces of at most `max_seconds`. Each cut is the latest point, from a
    fifth of the allowed span on, whose energy (over 100 ms) is within 2x of the quietest there: words are
    rarely split, and pieces stay as long as the pauses allow."""
    limit = int(max_seconds * sample_rate)
    if limit <= 0 or wave.numel() <= limit:
        return []
    hop = sample_rate // 100
    energy = wave[: wave.numel() // hop * hop].reshape(-1, hop).pow(2).mean(dim=1)  # per 10 ms
    smooth = torch.nn.functional.avg_pool1d(energy[None, None], 11, stride=1, padding=5,
                                            count_include_pad=False)[0, 0]
    cuts, start = [], 0
    while wave.numel() - start > limit:
        lo, hi = (start + limit // 5) // hop, (start + limit) // hop
        if hi <= lo:
            cuts.append(start + limit)
        else:
            window = smooth[lo:hi]
            quiet = (window <= 2 * window.min() + 1e-12).nonzero()
            cuts.append((lo + int(quiet[-1])) * hop)
        start = cuts[-1]
    return cuts


def pieces(wave: torch.Tensor, sample_rate: int, max_seconds: float) -> list[torch.Tensor]:
    """`wave` split at `quiet_cut_points` (views, no copies); a last sliver under 0.25 s joins its neighbour."""
    bounds = [0, *quiet_cut_points(wave, sample_rate, max_seconds), wave.numel()]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < sample_rate // 4:
        del bounds[-2]
    return [wave[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
