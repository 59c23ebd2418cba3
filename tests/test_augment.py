"""Waveform augmentation: reproducible from (seed, epoch, index) alone, and each transform doing what it claims,
measured on the output (RMS in dB, SNR, click position, FFT peak) rather than trusted from its parameters."""

from __future__ import annotations

import math

import pytest
import torch

from asr.data.augment import (
    SPEED_STEPS,
    WaveAugment,
    add_noise,
    apply_gain,
    item_generator,
    speed_perturb,
    time_shift,
)

SR = 16000
ALL_ON = WaveAugment(gain_db=6.0, noise_snr_db=10.0, shift_ms=50.0, speed=0.1)


def tone(freq: float = 440.0, seconds: float = 2.0, amplitude: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def speechlike(seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """A tone plus broadband noise, so every transform has something to change."""
    g = torch.Generator().manual_seed(seed)
    return tone(seconds=seconds) + 0.05 * torch.randn(int(seconds * SR), generator=g)


def rms_db(x: torch.Tensor) -> float:
    return 10 * math.log10(x.double().square().mean().item())


def peak_hz(x: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(x.double() * torch.hann_window(len(x), dtype=torch.float64)).abs()
    return spectrum.argmax().item() * SR / len(x)


# ---------------------------------------------------------------- reproducibility

def test_item_generator_is_deterministic_and_mixes_its_inputs():
    def stream(*args: int) -> torch.Tensor:
        return torch.rand(8, generator=item_generator(*args))

    assert torch.equal(stream(7, 1, 42), stream(7, 1, 42))
    # sums, swaps and neighbours that a naive seed + epoch + index would map to one stream
    keys = [(0, 1, 5), (0, 2, 4), (0, 5, 1), (1, 0, 5), (0, 0, 6), (0, 1, 6), (1, 1, 5), (-1, 2, 5)]
    streams = [stream(*k) for k in keys]
    for i in range(len(keys)):
        for j in range(i):
            assert not torch.equal(streams[i], streams[j]), (keys[i], keys[j])


def test_same_seed_same_output_different_item_or_epoch_different_output():
    wave = speechlike()
    a = ALL_ON(wave, item_generator(3, 0, 10))
    assert torch.equal(a, ALL_ON(wave, item_generator(3, 0, 10)))
    for other in (item_generator(3, 0, 11), item_generator(3, 1, 10), item_generator(4, 0, 10)):
        b = ALL_ON(wave, other)
        assert a.shape != b.shape or not torch.equal(a, b)


def test_global_rng_neither_used_nor_consumed():
    wave = speechlike()
    torch.manual_seed(1)
    a = ALL_ON(wave, item_generator(0, 0, 0))
    state = torch.get_rng_state()
    torch.manual_seed(2)
    state2 = torch.get_rng_state()
    b = ALL_ON(wave, item_generator(0, 0, 0))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state2) and not torch.equal(state, state2)


def test_switching_one_transform_leaves_the_others_draws_alone():
    on = ALL_ON.draw(item_generator(0, 0, 3))
    no_gain = WaveAugment(noise_snr_db=10.0, shift_ms=50.0, speed=0.1).draw(item_generator(0, 0, 3))
    assert no_gain.gain_db is None
    assert (no_gain.snr_db, no_gain.shift, no_gain.speed) == (on.snr_db, on.shift, on.speed)


# ---------------------------------------------------------------- off, silence, range

def test_off_returns_the_input_unchanged():
    wave = speechlike()
    off = WaveAugment()
    assert not off.enabled
    assert off(wave, item_generator(0, 0, 0)) is wave
    assert all(WaveAugment(**{k: v}).enabled for k, v in
               dict(gain_db=1.0, noise_snr_db=10.0, shift_ms=5.0, speed=0.05).items())


def test_input_is_not_modified():
    wave = speechlike()
    before = wave.clone()
    ALL_ON(wave, item_generator(0, 0, 0))
    assert torch.equal(wave, before)


def test_silence_stays_finite_and_silent():
    silence = torch.zeros(SR)
    for i in range(5):
        out = ALL_ON(silence, item_generator(0, 0, i))
        assert torch.isfinite(out).all()
        assert out.abs().max() == 0  # no signal power, so no noise either
    assert torch.equal(add_noise(silence, 10.0, torch.Generator()), silence)


def test_output_is_float32_1d_and_clipped_to_unit_range():
    loud = tone(amplitude=0.99, seconds=1.0)
    hot = WaveAugment(gain_db=12.0, noise_snr_db=5.0, shift_ms=20.0, speed=0.1)
    clipped = 0
    for i in range(8):
        out = hot(loud, item_generator(0, 0, i))
        assert out.dtype == torch.float32 and out.ndim == 1
        assert out.abs().max() <= 1.0
        clipped += int((out.abs() == 1.0).any())
    assert clipped > 0  # the test really drove it past full scale


def test_rejects_bad_settings_and_shapes():
    for bad in (dict(gain_db=-1.0), dict(shift_ms=-1.0), dict(speed=1.0), dict(speed=-0.1),
                dict(noise_snr_db=math.nan), dict(sample_rate=0)):
        with pytest.raises(ValueError):
            WaveAugment(**bad)
    with pytest.raises(ValueError, match="1-D"):
        ALL_ON(torch.zeros(2, SR), item_generator(0, 0, 0))


# ---------------------------------------------------------------- gain

def test_gain_changes_rms_by_the_drawn_decibels():
    wave = speechlike()
    assert rms_db(apply_gain(wave, -4.5)) - rms_db(wave) == pytest.approx(-4.5, abs=0.01)
    aug = WaveAugment(gain_db=6.0)
    gains = []
    for i in range(20):
        g = item_generator(0, 0, i)
        draw = aug.draw(item_generator(0, 0, i))
        out = aug(wave, g)
        assert rms_db(out) - rms_db(wave) == pytest.approx(draw.gain_db, abs=0.01)
        gains.append(draw.gain_db)
    assert all(-6.0 <= x <= 6.0 for x in gains)
    assert min(gains) < -2 and max(gains) > 2  # spread over the range, both signs


# ---------------------------------------------------------------- noise

def test_noise_hits_the_requested_snr():
    wave = speechlike(seconds=5.0)
    for snr in (0.0, 10.0, 25.0):
        noisy = add_noise(wave, snr, torch.Generator().manual_seed(1))
        assert rms_db(wave) - rms_db(noisy - wave) == pytest.approx(snr, abs=0.5)
    aug = WaveAugment(noise_snr_db=5.0)
    for i in range(4):
        draw = aug.draw(item_generator(0, 0, i))
        assert 5.0 <= draw.snr_db <= 25.0 and draw.gain_db is draw.shift is draw.speed is None
        noise = aug(wave, item_generator(0, 0, i)) - wave
        assert rms_db(wave) - rms_db(noise) == pytest.approx(draw.snr_db, abs=0.5)
        assert abs(noise.mean().item()) < 0.01 * noise.std().item() + 1e-4  # zero-mean white noise


# ---------------------------------------------------------------- shift

def test_shift_moves_a_click_by_the_shift():
    click = torch.zeros(SR)
    click[4000] = 0.5
    for shift in (160, -160, 0, 1):
        out = time_shift(click, shift)
        assert out.shape == click.shape
        assert out.argmax().item() == 4000 + shift and out.abs().sum() == 0.5
    assert time_shift(click, SR).abs().sum() == 0 and time_shift(click, -SR).abs().sum() == 0

    aug = WaveAugment(shift_ms=10.0)  # up to 160 samples either way
    shifts = []
    for i in range(20):
        draw = aug.draw(item_generator(1, 0, i))
        out = aug(click, item_generator(1, 0, i))
        shift = draw.shift or 0
        assert out.argmax().item() == 4000 + shift and abs(shift) <= 160 and out.shape == click.shape
        shifts.append(shift)
    assert min(shifts) < -40 and max(shifts) > 40


# ---------------------------------------------------------------- speed

@pytest.mark.parametrize("factor", [1.1, 0.9])
def test_speed_changes_length_and_pitch_by_the_factor(factor):
    wave = tone(440.0, seconds=2.0)
    out = speed_perturb(wave, factor)
    assert out.dtype == torch.float32 and out.ndim == 1
    assert len(out) == pytest.approx(len(wave) / factor, abs=2)
    assert peak_hz(out) == pytest.approx(440.0 * factor, abs=1.0)
    assert out.abs().max() == pytest.approx(0.3, abs=0.02)  # no loss or ringing in the passband


def test_speed_draws_quantized_factors_within_range():
    wave = tone(440.0, seconds=1.0)
    aug = WaveAugment(speed=0.1)
    factors = set()
    for i in range(30):
        draw = aug.draw(item_generator(2, 0, i))
        out = aug(wave, item_generator(2, 0, i))
        factor = draw.speed or 1.0
        assert 0.9 <= factor <= 1.1 and round(factor * SPEED_STEPS) == pytest.approx(factor * SPEED_STEPS)
        assert len(out) == math.ceil(len(wave) / factor - 1e-9)
        factors.add(factor)
    assert min(factors) < 0.97 and max(factors) > 1.03
