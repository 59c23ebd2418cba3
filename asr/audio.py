"""Audio loading: any file soundfile reads, mixed down to mono and resampled to the model's rate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

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
    """Returns a float32 mono waveform in [-1, 1] at `sample_rate`. Raises AudioError as open_audio and
    to_mono_16k do."""
    with open_audio(path) as f:
        try:
            data = f.read(dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 -- soundfile raises several types for unreadable files
            raise unreadable(str(path), e) from None
    return to_mono_16k(data, f.samplerate, sample_rate, name=str(path))


def open_audio(source: str | Path | BinaryIO, name: str | None = None) -> sf.SoundFile:
    """An audio file soundfile reads (a path, or a seekable file object), opened, its samples not yet read: what
    load_audio reads whole and a stream reads a block at a time. Raises AudioError, naming `name` (default: the
    path), for no such file, a file that is not audio (or corrupt, or truncated), or audio too short to featurize
    (check_length)."""
    name = name or str(source)
    if isinstance(source, str | Path) and not Path(source).is_file():  # libsndfile would only say "System error."
        raise AudioError(f"{name}: no such file")
    opened = str(source) if isinstance(source, Path) else source
    try:
        f = sf.SoundFile(opened)
    except Exception as e:  # noqa: BLE001 -- soundfile raises several types for unreadable files
        raise unreadable(name, e, opened) from None
    try:
        check_length(f.frames, f.samplerate, name)
    except AudioError:
        f.close()
        raise
    return f


def read_blocks(f: sf.SoundFile, frames: int, name: str) -> Iterator[np.ndarray]:
    """The samples of an open audio file (open_audio), `frames` at a time: float32 (frames, channels) in [-1, 1].
    Raises AudioError (as load_audio: corrupt or truncated), naming `name`, at a block that cannot be decoded."""
    blocks = f.blocks(frames, dtype="float32", always_2d=True)
    while True:
        try:
            block = next(blocks)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 -- soundfile raises several types for unreadable files
            raise unreadable(name, e) from None
        yield block


def unreadable(name: str, e: Exception, opened: object = None) -> AudioError:
    """The error for audio soundfile cannot read, naming `name` once (soundfile's message names what it opened,
    `opened`, again)."""
    detail = first_line(e).replace(f"Error opening {opened!r}: ", "")
    return AudioError(f"{name}: cannot read audio, the file is corrupt, truncated or not audio ({detail})")


def to_mono_16k(data: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> torch.Tensor:
    """(samples, channels) or (samples,) array at `rate` -> mono tensor at `sample_rate`. Every way audio enters
    (files, the served model's base64 and samples, training data) passes here. Raises AudioError, naming `name`,
    for audio too short to featurize (check_length) or holding NaN or infinite samples (check_finite)."""
    check_length(data.shape[0], rate, name)
    check_finite(data, name)
    wave = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if wave.ndim == 2:
        wave = wave.mean(dim=1)
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def check_length(frames: int, rate: int, name: str) -> None:
    """Raises AudioError, naming `name`, for `frames` samples at `rate` Hz too short to featurize (under
    MIN_SECONDS; an empty file too)."""
    if frames < MIN_SECONDS * rate:
        raise AudioError(f"{name}: audio is too short ({frames / rate:.3f} s; at least {MIN_SECONDS} s needed)")


def check_finite(data: np.ndarray, name: str) -> None:
    """Raises AudioError, naming `name` and counting them, when `data` holds NaN or infinite samples (float files
    can: they would be transcribed as silence)."""
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        raise AudioError(f"{name}: {bad} sample{'s' * (bad != 1)} not finite (NaN or infinite); the audio is corrupt")


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
