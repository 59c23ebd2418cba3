"""Waveform-level training augmentation: random gain, white noise, time shift and Kaldi-style speed perturbation.

Every random choice comes from a `torch.Generator` the caller passes in, never from the global RNG, so an
utterance's augmentation depends only on (seed, epoch, item index): the same whichever DataLoader worker
computes it, and the same again when a stopped run is resumed (see `item_generator`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

from asr.audio import SAMPLE_RATE

# Speed factors are quantized to 1/SPEED_STEPS (0.01): the resampling ratio is then SPEED_STEPS : k with
# small integers, so torchaudio's sinc kernel stays at most ~100 x 110 taps. An unquantized ratio such as
# 16000 : 14545 would need a kernel thousands of phases wide, rebuilt on every call.
SPEED_STEPS = 100
SNR_RANGE_DB = 20.0  # noise SNR is drawn from [noise_snr_db, noise_snr_db + SNR_RANGE_DB]


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from a hash of all three ints: seed+epoch+index would give (0, 1, 5) and (0, 2, 4)
    the same stream, and nearby seeds would give overlapping ones."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)  # 63 bits: any torch accepts


@dataclass(frozen=True)
class AugmentDraw:
    """What one call chose; None where that transform is off or drew a no-op."""

    gain_db: float | None
    snr_db: float | None
    shift: int | None  # samples; > 0 delays the audio (zeros in front), < 0 advances it (zeros at the end)
    speed: float | None  # the quantized factor actually applied; > 1 is faster and shorter


@dataclass(frozen=True)
class WaveAugment:
    """Random waveform perturbation for 1-D float32 waveforms in [-1, 1]; all-zero settings switch it off.

    Applied in the order speed, shift, gain, noise, then clipped to [-1, 1]: noise is added last so its
    SNR is measured against the signal that is actually there, and it also fills the zeros a shift pads in
    (no stretch of digital silence to give the shift away).
    """

    gain_db: float = 0.0  # random gain uniformly in [-gain_db, +gain_db] dB
    noise_snr_db: float = 0.0  # white Gaussian noise at an SNR uniform in [noise_snr_db, noise_snr_db + 20] dB
    shift_ms: float = 0.0  # random time shift in [-shift_ms, +shift_ms]; the length is unchanged
    speed: float = 0.0  # speed factor uniform in [1 - speed, 1 + speed], quantized to 0.01
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        for name in ("gain_db", "noise_snr_db", "shift_ms", "speed"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.gain_db < 0 or self.shift_ms < 0:
            raise ValueError("gain_db and shift_ms are ranges (+/-) and must be >= 0")
        if not 0 <= self.speed < 1:
            raise ValueError(f"speed must be in [0, 1), got {self.speed}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    @property
    def enabled(self) -> bool:
        return bool(self.gain_db or self.noise_snr_db or self.shift_ms or self.speed)

    def draw(self, generator: torch.Generator) -> AugmentDraw:
        """Draws all four parameters, on or off, always in the same order: switching one transform on or off
        then leaves the values the others draw unchanged."""
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        gain = (2 * u[0] - 1) * self.gain_db if self.gain_db else None
        snr = self.noise_snr_db + u[1] * SNR_RANGE_DB if self.noise_snr_db else None
        max_shift = round(self.shift_ms * self.sample_rate / 1000)
        shift = round((2 * u[2] - 1) * max_shift) or None
        steps = round((1 + (2 * u[3] - 1) * self.speed) * SPEED_STEPS)
        speed = steps / SPEED_STEPS if steps != SPEED_STEPS else None
        return AugmentDraw(gain, snr, shift, speed)

    def apply(self, wave: torch.Tensor, draw: AugmentDraw, generator: torch.Generator) -> torch.Tensor:
        """`wave` perturbed as `draw` says; `generator` supplies the noise samples."""
        if draw.speed is not None:
            wave = speed_perturb(wave, draw.speed)
        if draw.shift is not None:
            wave = time_shift(wave, draw.shift)
        if draw.gain_db is not None:
            wave = apply_gain(wave, draw.gain_db)
        if draw.snr_db is not None:
            wave = add_noise(wave, draw.snr_db, generator)
        return wave.clamp(-1.0, 1.0)

    def __call__(self, wave: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.enabled:
            return wave
        if wave.ndim != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
        return self.apply(wave, self.draw(generator), generator)


def apply_gain(wave: torch.Tensor, gain_db: float) -> torch.Tensor:
    return wave * (10.0 ** (gain_db / 20.0))


def add_noise(wave: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    """White Gaussian noise at `snr_db` below the utterance's mean power; silence gets none (and no NaN)."""
    power = wave.double().square().mean().item() if wave.numel() else 0.0
    if power <= 0.0:
        return wave
    std = math.sqrt(power / 10.0 ** (snr_db / 10.0))
    return wave + std * torch.randn(wave.shape, generator=generator, dtype=wave.dtype)


def time_shift(wave: torch.Tensor, shift: int) -> torch.Tensor:
    """Same length, content moved by `shift` samples: > 0 pads zeros in front and drops the tail, < 0 drops
    the head and pads zeros at the end. A shift as long as the wave leaves only zeros."""
    n = wave.shape[-1]
    out = torch.zeros_like(wave)
    if shift >= 0:
        out[..., shift:] = wave[..., : max(n - shift, 0)]
    else:
        out[..., : max(n + shift, 0)] = wave[..., -shift:]
    return out


def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """Plays the wave `factor` times as fast, as Kaldi/sox `speed` does: duration / factor, and every
    frequency (pitch and formants) x factor. Resampling from rate `factor` to 1 (in SPEED_STEPS units) and
    then reading the result at the original rate gives exactly that; len(out) = ceil(len / factor)."""
    steps = round(factor * SPEED_STEPS)
    if steps <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if steps == SPEED_STEPS:
        return wave
    return AF.resample(wave, orig_freq=steps, new_freq=SPEED_STEPS)
