"""`--precision`: explicit choices, the margin rule of `auto`, the probe that measures it on a CPU and its cache."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import torch_threads

from asr import UserError
from asr import precision_probe as pp
from asr.config import DecodeConfig, FeatureConfig, ModelConfig, RecognizerConfig
from asr.model import SpeechModel
from asr.precision import Decision, bf16_wins, decide
from asr.text import VOCAB
from asr.transcribe import Transcriber

CPU = torch.device("cpu")
SMALL = RecognizerConfig(FeatureConfig(), ModelConfig(rnn_dim=32, rnn_layers=1, cnn_channels=4))
PROBED = re.compile(r"fp32 \d+\.\d ms, (bf16 \d+\.\d ms|bf16 does not run) per (step|forward)( \(.+\))?")


@pytest.mark.parametrize(("fp32", "bf16", "wins"), [
    (100.0, 50.0, True),
    (100.0, 95.0, True),        # exactly the margin
    (100.0, 95.5, False),       # faster, but within the margin: fp32
    (100.0, 120.0, False),
    (100.0, math.inf, False),   # bf16 did not run
    (100.0, math.nan, False),
    (0.0, 0.0, False),
])
def test_bf16_is_taken_only_when_faster_by_the_margin(fp32: float, bf16: float, wins: bool):
    assert bf16_wins(fp32, bf16) is wins


def test_a_wider_margin_asks_more_of_bf16():
    assert bf16_wins(100.0, 90.0, margin=0.05)
    assert not bf16_wins(100.0, 90.0, margin=0.2)


def test_explicit_precisions_are_taken_as_asked():
    assert decide("fp32", CPU, SMALL, training=True) == Decision(None, "asked")
    assert decide("bf16", CPU, SMALL, training=True) == Decision(torch.bfloat16, "asked")
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        decide("fp16", CPU, SMALL, training=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_on_a_gpu_is_bf16_exactly_where_it_computes_in_bf16():
    gpu = torch.device("cuda", 0)
    decision = decide("auto", gpu, SMALL, training=True)
    assert decision.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None)
    assert torch.cuda.get_device_name(gpu) in decision.why


class FakeMeasure:
    """Stands in for the timing itself, to count how often the cache sends the probe to measure."""

    def __init__(self, fp32_ms: float, bf16_ms: float):
        self.fp32_ms, self.bf16_ms, self.calls = fp32_ms, bf16_ms, 0

    def __call__(self, recognizer, training, utterances, seconds) -> pp.Timing:
        self.calls += 1
        return pp.Timing(self.fp32_ms, self.bf16_ms, training, 3)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "asr" / "precision.json"


def test_the_cache_lives_under_xdg_cache_home_and_falls_back_to_home(cache: Path, monkeypatch: pytest.MonkeyPatch):
    assert pp.cache_file() == cache
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec: relative paths are ignored
    monkeypatch.setenv("HOME", str(cache.parent))
    assert pp.cache_file() == cache.parent / ".cache" / "asr" / "precision.json"


def test_a_probe_is_cached_and_a_new_key_probes_again(cache: Path, monkeypatch: pytest.MonkeyPatch):
    fake = FakeMeasure(40.0, 20.0)
    monkeypatch.setattr(pp, "measure", fake)
    first = decide("auto", CPU, SMALL, training=True)
    assert (first.dtype, first.why, fake.calls) == (torch.bfloat16, "fp32 40.0 ms, bf16 20.0 ms per step", 1)
    assert first.params() == {"precision_used": "bf16", "precision_probe": "fp32 40.0 ms, bf16 20.0 ms per step"}
    assert len(json.loads(cache.read_text())["entries"]) == 1

    again = decide("auto", CPU, SMALL, training=True)
    assert (again.dtype, again.why, fake.calls) == (torch.bfloat16, "fp32 40.0 ms, bf16 20.0 ms per step (cached)", 1)

    bigger = RecognizerConfig(FeatureConfig(), ModelConfig(rnn_dim=48, rnn_layers=1, cnn_channels=4))
    for recognizer, training in ((bigger, True), (SMALL, False)):  # another model shape; inference, not training
        assert "cached" not in decide("auto", CPU, recognizer, training=training).why
    assert fake.calls == 3
    with torch_threads(1 if torch.get_num_threads() > 1 else 2):
        assert "cached" not in decide("auto", CPU, SMALL, training=True).why  # other threads, other timing
    assert fake.calls == 4
    assert len(json.loads(cache.read_text())["entries"]) == 4


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"entries": {"k": 3}}', '{"entries": []}', ""])
def test_a_corrupt_cache_is_ignored_and_rewritten(cache: Path, monkeypatch: pytest.MonkeyPatch, content: str):
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    fake = FakeMeasure(40.0, 39.0)
    monkeypatch.setattr(pp, "measure", fake)
    assert decide("auto", CPU, SMALL, training=True) == Decision(None, "fp32 40.0 ms, bf16 39.0 ms per step")
    assert fake.calls == 1
    assert len(json.loads(cache.read_text())["entries"]) == 1
    assert "cached" in decide("auto", CPU, SMALL, training=True).why


def test_an_entry_of_another_layout_is_measured_again(cache: Path, monkeypatch: pytest.MonkeyPatch):
    key = pp.probe_key(SMALL, True, pp.TRAINING_BATCH[0], pp.TRAINING_BATCH[1])
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"entries": {key: {"fp32": 1}}}))
    fake = FakeMeasure(40.0, 30.0)
    monkeypatch.setattr(pp, "measure", fake)
    assert decide("auto", CPU, SMALL, training=True).dtype == torch.bfloat16
    assert fake.calls == 1


def scripted(monkeypatch: pytest.MonkeyPatch, fp32: list[float], bf16: list[float]) -> pp.Timing:
    """What the probe makes of step times (seconds, in the order measured) given in place of real ones."""
    times = {None: list(fp32), torch.bfloat16: list(bf16)}
    monkeypatch.setattr(pp, "_timed", lambda step, dtype: times[dtype].pop(0))
    return pp._interleaved(lambda dtype: None, training=True)


def test_interleaved_steps_count_the_median_of_each_dtype(monkeypatch: pytest.MonkeyPatch):
    timing = scripted(monkeypatch, [0.10] * 7, [0.09, 0.08, 0.30, 0.08, 0.08, 0.08, 0.09])
    assert (timing.fp32_ms, timing.bf16_ms, timing.repeats) == (pytest.approx(100), pytest.approx(80), 7)
    assert timing.note == pp.NOT_CACHED  # one bf16 step 3.75x the median: another process took the cores


def test_bf16_slower_by_far_in_two_steps_stops_the_probe(monkeypatch: pytest.MonkeyPatch):
    timing = scripted(monkeypatch, [0.10, 0.11], [0.50, 0.40])
    assert (timing.repeats, timing.note) == (2, "bf16 emulated: stopped after two steps")
    assert timing.bf16_ms == pytest.approx(450)
    once = scripted(monkeypatch, [0.10] * 7, [0.50] + [0.10] * 6)  # slow once only: a hiccup, not emulation
    assert once.repeats == 7


def test_noisy_timings_mean_fp32_and_are_not_cached(cache: Path, monkeypatch: pytest.MonkeyPatch):
    assert pp.noisy([0.10, 0.11, 0.30]) and not pp.noisy([0.10, 0.11, 0.12]) and not pp.noisy([5.0])
    fake = FakeMeasure(40.0, 20.0)
    monkeypatch.setattr(pp, "measure", lambda *args: pp.Timing(40.0, 20.0, True, 3, pp.NOT_CACHED))
    assert decide("auto", CPU, SMALL, training=True) == Decision(None, "fp32 40.0 ms, bf16 20.0 ms per step "
                                                                       "(noisy, not cached)")
    assert not cache.exists()
    monkeypatch.setattr(pp, "measure", fake)
    assert "cached" not in decide("auto", CPU, SMALL, training=True).why
    assert fake.calls == 1


def test_an_unwritable_cache_still_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "asr").write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(pp, "measure", FakeMeasure(40.0, 30.0))
    assert decide("auto", CPU, SMALL, training=True).dtype == torch.bfloat16


def test_a_real_probe_times_the_training_step_and_leaves_the_rng_alone(cache: Path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    started = time.perf_counter()
    decision = decide("auto", CPU, SMALL, training=True)
    took = time.perf_counter() - started
    assert torch.equal(torch.rand(3), expected)  # a run's weights must not depend on whether the probe ran
    assert decision.dtype in (None, torch.bfloat16)
    assert PROBED.fullmatch(decision.why), decision.why
    assert " per step" in decision.why
    if "not cached" not in decision.why:  # times too noisy to keep (a loaded machine) are not cached
        timing = next(iter(json.loads(cache.read_text())["entries"].values()))
        assert timing["fp32_ms"] > 0 and timing["repeats"] >= pp.REPEATS[0]
    assert took < 60, f"the probe took {took:.1f} s"  # seconds here; generous for a loaded machine


def test_transcribing_with_auto_probes_the_forward_pass(cache: Path):
    torch.manual_seed(0)
    transcriber = Transcriber(SMALL, SpeechModel.from_config(SMALL, len(VOCAB)), DecodeConfig(precision="auto"))
    assert PROBED.fullmatch(transcriber.precision.why) and " per forward" in transcriber.precision.why
    params = transcriber.precision_params()
    assert params["precision_used"] in ("fp32", "bf16") and params["precision_probe"] == transcriber.precision.why
    assert len(transcriber.transcribe([torch.zeros(16000)])) == 1
    transcriber.configure(DecodeConfig(precision="int8"))
    assert transcriber.precision_params() == {"precision_used": "int8", "precision_probe": "asked"}
