"""Streaming models and live transcription (asr.streaming): the streaming model variant is causal and independent of
batch padding, the recognizer's log-probabilities equal the offline model's whatever the chunk sizes, endpointing
cuts segments at silences with bounded memory, and bad settings are refused in one line. Real audio (a LibriSpeech
test-clean utterance, or the synthesized corpus when the sample is absent), real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    LIBRISPEECH,
    asr_command,
    make_tiny_config,
    one_line_error,
    run_cli,
    synthesized_corpus,
    torch_threads,
)
from stream_models import VOCAB_SIZE, energy_detector, random_streaming_model, streaming_config

import asr
from asr import checkpoint as ckpt
from asr.audio import load_audio
from asr.config import ConfigError, FeatureConfig, RecognizerConfig, from_dict, to_dict
from asr.data.dataset import read_split
from asr.decoding import greedy_decode
from asr.features import FeatureExtractor
from asr.model import LookAhead, SpeechModel
from asr.settings import TrainConfig
from asr.streaming import NotStreamable, Segment, StreamError, StreamingRecognizer, StreamUpdate
from asr.text import BLANK, ENGLISH_TEXT
from asr.transcribe import Transcriber


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> list[torch.Tensor]:
    """Three real utterances of 2-6 s: LibriSpeech test-clean when the shared sample is there, else synthesized."""
    split = LIBRISPEECH / "test-clean"
    if not split.is_dir():
        split = synthesized_corpus(tmp_path_factory) / "test"
    waves = [load_audio(u.path) for u in read_split(split)]
    picked = [w for w in waves if 2 * 16000 <= w.numel() <= 6 * 16000][:3]
    assert len(picked) == 3
    return picked


def offline_log_probs(model: SpeechModel, features: FeatureExtractor, wave: torch.Tensor) -> torch.Tensor:
    feats = features(wave)
    with torch.no_grad():
        log_probs, lengths = model(feats[None], torch.tensor([feats.shape[-1]]))
    return log_probs[0, :lengths[0]]


def streamed_log_probs(recognizer: StreamingRecognizer, wave: torch.Tensor, chunk: int) -> torch.Tensor:
    recognizer.reset()
    rows = [recognizer.advance(wave[i:i + chunk].numpy()) for i in range(0, wave.numel(), chunk)]
    rows.append(recognizer.advance(None))
    return torch.cat([r for r in rows if r.numel()])


# ---------------------------------------------------------------- the streaming model


@pytest.mark.parametrize("lookahead", [0, 3])
def test_streaming_rows_do_not_depend_on_batch_padding(lookahead: int):
    model = random_streaming_model(streaming_config(lookahead=lookahead))
    feats = torch.randn(3, 13, 90) * 20
    lengths = torch.tensor([90, 61, 7])
    batch, out_lengths = model(feats, lengths)
    for row, n in enumerate(lengths.tolist()):
        alone, alone_lengths = model(feats[row:row + 1, :, :n], lengths[row:row + 1])
        assert alone_lengths[0] == out_lengths[row]
        assert torch.allclose(alone[0], batch[row, :out_lengths[row]], atol=1e-5)


def test_lookahead_zero_is_strictly_causal_and_lookahead_n_sees_n_frames_ahead():
    """Output frame t hears feature frames up to time_stride * (t + 2 * cnn_layers) + 1 (the convolutions' fixed
    context) and, through the look-ahead, `lookahead` output frames more: later features change later frames only."""
    torch.manual_seed(1)
    feats = torch.randn(1, 13, 120) * 20
    changed = feats.clone()
    k = 60
    changed[..., k:] = torch.randn(13, 120 - k) * 20
    for lookahead in (0, 2):
        cfg = streaming_config(lookahead=lookahead, cnn_layers=1)
        model = random_streaming_model(cfg)
        a = model(feats, torch.tensor([120]))[0][0]
        b = model(changed, torch.tensor([120]))[0][0]
        stride, context = cfg.model.time_stride, 2 * cfg.model.cnn_layers
        first = next(t for t in range(a.shape[0]) if stride * (t + context) + 1 >= k) - lookahead
        assert torch.equal(a[:first], b[:first]), f"lookahead {lookahead}: a frame before {first} heard the change"
        assert (a[first] - b[first]).abs().max() > 1e-3, f"lookahead {lookahead}: frame {first} did not hear it"


def test_the_lookahead_stepped_in_pieces_equals_it_on_the_whole():
    torch.manual_seed(0)
    layer = LookAhead(5, 3)
    torch.nn.init.normal_(layer.conv.weight)
    x = torch.randn(2, 40, 5)
    with torch.no_grad():
        expected = layer(x)
        for sizes in ([1], [0, 2, 5], [40]):
            pieces, pending, i, k = [], None, 0, 0
            while i < x.shape[1]:
                n = sizes[k % len(sizes)]
                out, pending = layer.step(x[:, i:i + n], pending)
                pieces.append(out)
                assert pending.shape[1] <= 3
                i, k = i + n, k + 1
            out, pending = layer.step(x[:, :0], pending, final=True)
            assert pending is None
            assert torch.allclose(torch.cat([*pieces, out], dim=1), expected, atol=1e-6), sizes


def test_causal_features_hear_no_later_samples(utterances):
    """A causal feature frame f depends on samples up to f * hop + n_fft / 2 only (the centered STFT), with no
    utterance-wide normalization or dB clamp: changing later samples leaves it exactly as it was."""
    causal = FeatureExtractor.from_config(FeatureConfig(), causal=True)
    wave = utterances[0]
    changed = wave.clone()
    cut = 16000
    changed[cut:] = torch.flip(changed[cut:], [0])
    a, b = causal(wave), causal(changed)
    last_unaffected = (cut - causal.n_fft // 2) // causal.hop - 1
    assert torch.equal(a[:, :last_unaffected + 1], b[:, :last_unaffected + 1])
    assert not torch.equal(a[:, last_unaffected + 5], b[:, last_unaffected + 5])
    per_utterance = FeatureExtractor.from_config(FeatureConfig())
    assert not torch.equal(per_utterance(wave)[:, :10], per_utterance(changed)[:, :10])  # what streaming avoids


def test_causal_features_have_their_own_store_key_and_the_default_key_is_unchanged():
    default = FeatureExtractor.from_config(FeatureConfig()).settings()
    assert default == {"sample_rate": 16000, "n_mfcc": 13, "n_mels": 80, "win_ms": 25.0, "hop_ms": 10.0, "version": 1}
    assert FeatureExtractor.for_recognizer(streaming_config()).settings() != default


def test_streaming_checkpoint_carries_settings_and_statistics_and_old_checkpoints_load_bidirectional(tmp_path):
    cfg = streaming_config(lookahead=3)
    model = random_streaming_model(cfg)
    path = ckpt.save_checkpoint(tmp_path / "s.pt", cfg, model)
    loaded_cfg, loaded = ckpt.load_checkpoint(path)
    assert (loaded_cfg.model.streaming, loaded_cfg.model.lookahead) == (True, 3)
    assert torch.equal(loaded.mean, model.mean) and torch.equal(loaded.std, model.std)
    assert loaded.classifier[0].in_features == cfg.model.rnn_dim  # one direction

    old = RecognizerConfig()
    state = ckpt.model_state(old, SpeechModel.from_config(old, VOCAB_SIZE))
    for key in ("streaming", "lookahead"):
        del state["config"][key]  # written before the streaming settings existed
    ckpt.atomic_save(state, tmp_path / "old.pt")
    old_cfg, old_model = ckpt.load_checkpoint(tmp_path / "old.pt")
    assert not old_cfg.model.streaming and not old_model.streaming and old_model.lookahead is None


def test_finetuning_starts_from_the_parents_statistics():
    from asr.training import finetune

    cfg = streaming_config()
    parent = random_streaming_model(cfg, seed=3)
    child = SpeechModel.from_config(cfg, VOCAB_SIZE)
    train_cfg = make_tiny_config(Path("."), streaming=True, cnn_layers=2, cnn_channels=4, rnn_layers=2, rnn_dim=24)
    info = finetune.Parent("parent.pt", "parent.pt", "0" * 64, cfg, ENGLISH_TEXT.vocabulary.symbols,
                           parent.state_dict())
    finetune.prepare(child, train_cfg, info, ENGLISH_TEXT.vocabulary.symbols, lambda _: None)
    assert torch.equal(child.mean, parent.mean) and torch.equal(child.std, parent.std)


def test_freeze_names_the_lookahead_of_a_streaming_model_and_refuses_what_a_model_lacks():
    from asr.training.finetune import freeze, trainable

    streaming = SpeechModel.from_config(streaming_config(), VOCAB_SIZE)
    freeze(streaming, ("rnns", "lookahead"))
    assert not any(p.requires_grad for p in streaming.lookahead.parameters())
    assert all(p.requires_grad for p in streaming.classifier.parameters()) and trainable(streaming) > 0
    bidirectional = SpeechModel.from_config(RecognizerConfig(), VOCAB_SIZE)
    with pytest.raises(ConfigError, match="--freeze lookahead: the model has no such layer"):
        freeze(bidirectional, ("lookahead",))
    with pytest.raises(ConfigError, match="names every block of this model: nothing would train"):
        freeze(SpeechModel.from_config(RecognizerConfig(), VOCAB_SIZE), ("stem", "cnn", "proj", "rnns", "classifier"))


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(("values", "expected"), [
    ({"lookahead": 3}, "--lookahead 3 needs --streaming"),
    ({"streaming": True, "lookahead": -1}, "--lookahead must be at least 0, got -1"),
])
def test_bad_streaming_settings_are_refused_in_one_line(values, expected):
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, values)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_streaming_settings_reach_the_recognizer_config():
    cfg = from_dict(TrainConfig, {"streaming": True, "lookahead": 0})
    assert to_dict(cfg.recognizer())["streaming"] is True and cfg.recognizer().model.lookahead == 0


@pytest.mark.slow  # a CLI subprocess
def test_cli_refuses_lookahead_without_streaming(tmp_path: Path):
    proc = run_cli([*asr_command(), "train", "--lookahead", "4"], tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert "--lookahead 4 needs --streaming" in proc.stderr


# ---------------------------------------------------------------- the recognizer equals the offline model


@pytest.mark.parametrize("stride", [1, 2, 4, 5])
def test_the_recognizer_equals_the_offline_model_at_every_time_stride(utterances, stride):
    """Frame by frame (160 samples = one feature frame) and 7 frames at a time: a stride over 3 makes the stem
    skip frames that have not arrived yet when the buffer is trimmed."""
    cfg = streaming_config(time_stride=stride)
    model = random_streaming_model(cfg)
    transcriber = Transcriber(cfg, model)
    wave = utterances[0][:16000]
    with torch_threads(1):
        expected = offline_log_probs(model, transcriber.features, wave)
        for chunk in (160, 1120):
            got = streamed_log_probs(StreamingRecognizer(transcriber, endpoint_ms=1e9, max_segment_s=1e9), wave,
                                     chunk)
            assert got.shape == expected.shape and (got - expected).abs().max() < 1e-4, (stride, chunk)


@pytest.mark.parametrize("chunk", [160, 1601, 8000, None])
def test_recognizer_log_probs_and_text_equal_the_offline_models(utterances, chunk):
    cfg = streaming_config()
    model = random_streaming_model(cfg)
    transcriber = Transcriber(cfg, model)
    wave = utterances[0]
    chunk = chunk or wave.numel()
    with torch_threads(1):
        expected = offline_log_probs(model, transcriber.features, wave)
        recognizer = StreamingRecognizer(transcriber, endpoint_ms=1e9, max_segment_s=1e9)
        got = streamed_log_probs(recognizer, wave, chunk)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4

        recognizer.reset()
        finals = []
        for i in range(0, wave.numel(), chunk):
            finals += recognizer.accept(wave[i:i + chunk].numpy()).finals
        finals += recognizer.finish().finals
    offline_text = greedy_decode(expected[None], torch.tensor([expected.shape[0]]))[0]
    assert offline_text  # a random model says something: the comparison below is not vacuous
    assert [s.text for s in finals] == [offline_text]


def test_recognizer_takes_empty_and_odd_chunks_and_resets(utterances):
    cfg = streaming_config(lookahead=1, cnn_layers=1)
    model = random_streaming_model(cfg, seed=2)
    transcriber = Transcriber(cfg, model)
    recognizer = StreamingRecognizer(transcriber, endpoint_ms=1e9, max_segment_s=1e9)
    wave = utterances[1][:40000]
    sizes = [0, 1, 7, 255, 2, 0, 3001, 17]
    rows, i, k = [], 0, 0
    while i < wave.numel():
        n = sizes[k % len(sizes)]
        rows.append(recognizer.advance(wave[i:i + n]))
        i, k = i + n, k + 1
    rows.append(recognizer.advance(None))
    got = torch.cat([r for r in rows if r.numel()])
    expected = offline_log_probs(model, transcriber.features, wave)
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-4
    with pytest.raises(StreamError, match="reset"):
        recognizer.accept(wave[:100])
    again = streamed_log_probs(recognizer, wave, 4000)  # reset() inside: a second stream, same answer
    assert (again - expected).abs().max() < 1e-4
    recognizer.reset()
    with pytest.raises(StreamError, match="mono"):
        recognizer.accept(np.zeros((2, 100), dtype=np.float32))


def test_exact_only_refuses_a_bidirectional_model_with_the_reason():
    cfg = RecognizerConfig()
    transcriber = Transcriber(cfg, SpeechModel.from_config(cfg, VOCAB_SIZE))
    with pytest.raises(NotStreamable, match="--streaming") as e:
        StreamingRecognizer(transcriber, exact_only=True)
    assert "\n" not in str(e.value)
    assert StreamingRecognizer(transcriber).mode == "segment"


# ---------------------------------------------------------------- endpointing


def with_silences(waves: list[torch.Tensor], seconds: float = 1.0) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    gap = torch.zeros(int(seconds * 16000))
    parts, spans, t = [], [], 0.0
    for w in waves:
        parts += [w, gap]
        spans.append((t, t + w.numel() / 16000))
        t += (w.numel() + gap.numel()) / 16000
    return torch.cat(parts), spans


def run_stream(recognizer: StreamingRecognizer, wave: torch.Tensor, chunk: int) -> list[Segment]:
    finals: list[Segment] = []
    for i in range(0, wave.numel(), chunk):
        update = recognizer.accept(wave[i:i + chunk])
        assert isinstance(update, StreamUpdate)
        finals += update.finals
    return finals + list(recognizer.finish().finals)


def test_endpoints_cut_segments_at_silences(utterances):
    wave, spans = with_silences(utterances)
    recognizer = StreamingRecognizer(energy_detector(), endpoint_ms=500)
    partials = []
    finals: list[Segment] = []
    for i in range(0, wave.numel(), 1601):
        update = recognizer.accept(wave[i:i + 1601])
        partials.append(update.partial)
        finals += update.finals
        if update.finals:  # finalized once half a second of silence has passed the end of its speech
            assert recognizer.seconds >= update.finals[-1].end + 0.5
    assert not recognizer.finish().finals  # the stream ended in silence: nothing left open
    assert [s.text for s in finals] == ["a", "a", "a"]
    assert "a" in partials and "" in partials
    for segment, (start, end) in zip(finals, spans, strict=True):
        assert segment.start == pytest.approx(start, abs=0.1) and segment.end == pytest.approx(end, abs=0.1)
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:], strict=False))


def open_segment_text(recognizer: StreamingRecognizer) -> str:
    """Greedy text of the open segment's log-prob rows decoded from scratch ("" before its first speech)."""
    if recognizer.speech_start is None:
        return ""
    rows = torch.stack(recognizer.segment)[None]
    return greedy_decode(rows, torch.tensor([rows.shape[1]]), recognizer.transcriber.text.vocabulary)[0]


@pytest.mark.parametrize("detector", [False, True])
def test_the_partial_is_the_open_segments_greedy_text_after_every_chunk(utterances, detector: bool):
    """The partial kept up frame by frame equals decoding the open segment's rows whole, whatever the chunk sizes:
    a random model whose blank wins about half the frames (letters repeated across blanks, spaces; one long
    segment) and the energy detector (segments cut at the silences, inside a chunk)."""
    if detector:
        recognizer = StreamingRecognizer(energy_detector(), endpoint_ms=300)
        wave = with_silences(utterances, seconds=0.5)[0][:8 * 16000]
    else:
        cfg = streaming_config()
        model = random_streaming_model(cfg, seed=4)  # says "a", "d" and spaces
        transcriber = Transcriber(cfg, model)
        wave = utterances[0]
        with torch.no_grad():
            log_probs = offline_log_probs(model, transcriber.features, wave)
            model.classifier[-1].bias[BLANK] += (log_probs[:, 1:].max(dim=-1).values - log_probs[:, BLANK]).median()
        recognizer = StreamingRecognizer(transcriber, endpoint_ms=1e9, max_segment_s=1e9)
    partials, finals = set(), 0
    with torch_threads(1):
        for sizes in ([160], [479, 480, 481], [1, 7, 2000, 0, 333], [16000]):
            recognizer.reset()
            i, k = 0, 0
            while i < wave.numel():
                n = sizes[k % len(sizes)]
                update = recognizer.accept(wave[i:i + n])
                assert update.partial == open_segment_text(recognizer), (sizes, i)
                partials.add(update.partial)
                finals += len(update.finals)
                i, k = i + n, k + 1
            recognizer.finish()
    if detector:  # segments were cut, and the partial restarted after each
        assert partials == {"", "a"} and finals >= 2 * 4
    else:  # the text grew along the way
        assert len(partials) > 5


def test_a_bidirectional_model_streams_in_segment_mode(utterances):
    """The existing (bidirectional) models work live too: segments at the silences, from re-run passes."""
    wave, spans = with_silences(utterances)
    recognizer = StreamingRecognizer(energy_detector(streaming=False), endpoint_ms=500, partial_ms=300)
    assert recognizer.mode == "segment"
    finals = run_stream(recognizer, wave, 1601)
    assert len(finals) >= 3 and all(set(s.text) == {"a"} for s in finals)  # "a" flickers: per-utterance norm
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:], strict=False))
    for start, end in spans:  # every utterance is in segments, and every segment in an utterance
        assert any(start - 0.1 <= s.start < end for s in finals)
    assert all(any(start - 0.1 <= s.start and s.end <= end + 0.1 for start, end in spans) for s in finals)
    assert recognizer.held()["samples"] <= 30 * 16000


@pytest.mark.parametrize("max_segment_s", [30.0, 1.2])
def test_segment_mode_gives_the_same_passes_whatever_the_chunk_size(utterances, max_segment_s: float):
    """Chunks that divide partial_ms run the same passes on the same audio: the same partials at each pass and
    the same finals, from 10 ms chunks (the audio kept piece by piece) as from one chunk a pass; each chunk comes
    in one reused buffer, as from a sound card's callback, so the recognizer must keep copies."""
    wave = with_silences(utterances, seconds=0.6)[0]
    every = 4800  # partial_ms 300

    def run(chunk: int) -> tuple[list[str], list[Segment]]:
        recognizer = StreamingRecognizer(energy_detector(streaming=False), endpoint_ms=500, partial_ms=300,
                                         max_segment_s=max_segment_s)
        at_passes, finals = [], []
        buffer = np.empty(chunk, np.float32)
        for piece in wave.split(chunk):
            buffer[:piece.numel()] = piece.numpy()
            update = recognizer.accept(buffer[:piece.numel()])
            finals += update.finals
            assert recognizer.held()["samples"] <= max_segment_s * 16000
            if recognizer.seconds * 16000 % every == 0:
                at_passes.append(update.partial)
        return at_passes, finals + list(recognizer.finish().finals)

    small, whole = run(160), run(every)
    assert small == whole
    assert any(small[0]) and len(small[1]) >= 3


def test_max_segment_length_cuts_long_speech(utterances):
    wave = torch.cat(utterances)  # no silence at all
    recognizer = StreamingRecognizer(energy_detector(), endpoint_ms=500, max_segment_s=1.5)
    finals = run_stream(recognizer, wave, 8000)
    total = wave.numel() / 16000
    assert len(finals) >= int(total / 1.5)
    assert all(s.end - s.start <= 1.5 + 1e-6 for s in finals)
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:], strict=False))


def test_state_stays_bounded_over_a_long_stream(utterances):
    """What the recognizer holds does not grow with the stream: 4 times the audio, the same maxima."""
    wave, _ = with_silences(utterances)
    recognizer = StreamingRecognizer(energy_detector(), endpoint_ms=500, max_segment_s=3)

    def peak(repeats: int) -> dict[str, int]:
        recognizer.reset()
        most: dict[str, int] = {}
        for _ in range(repeats):
            for i in range(0, wave.numel(), 3200):
                recognizer.accept(wave[i:i + 3200])
                for k, v in recognizer.held().items():
                    most[k] = max(most.get(k, 0), v)
        recognizer.finish()
        return most

    once, four = peak(1), peak(4)
    assert four == once
    assert four["segment_frames"] <= 3 * recognizer.frames_per_second


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_streaming_model_exports_equal_the_eager_model(tmp_path: Path, fmt: str):
    from asr.export import export_model, max_abs_diff, read_metadata

    cfg = streaming_config(lookahead=2, rnn_layers=1)
    model = random_streaming_model(cfg)
    path = export_model(model, fmt, tmp_path / fmt, config=cfg)
    feats, lengths = torch.randn(2, 13, 150) * 20, torch.tensor([150, 97])
    assert max_abs_diff(model, path, fmt, feats, lengths) < 1e-4
    meta = read_metadata(path, fmt)
    assert meta["streaming"] is True and meta["lookahead"] == 2 and meta["features"]["top_db"] is None


# ---------------------------------------------------------------- a trained streaming model


@pytest.mark.slow  # trains
def test_tiny_streaming_training_registers_loads_transcribes_and_streams(tiny_config, isolated_mlflow: str,
                                                                         tmp_path: Path, utterances):
    from mlflow import MlflowClient

    from asr.training.train import train

    cfg = tiny_config(streaming=True, lookahead=1, output_dir=str(tmp_path / "out"))
    result = train(cfg, progress=False)
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["streaming"] == "True" and params["lookahead"] == "1" and int(params["feature_stats_utterances"]) >= 1
    assert int(params["feature_stats_frames"]) > 100
    transcriber = asr.load(f"models:/SpeechRecognitionModel/{result.promotion.version}")
    model = transcriber.fp32_model
    assert model.streaming and model.lookahead_frames == 1
    assert model.std.max() > 1.0 and model.mean.abs().max() > 1.0  # fitted, not the initial 0 and 1
    wave = utterances[0]
    [offline] = transcriber.transcribe([wave])
    recognizer = StreamingRecognizer(transcriber, endpoint_ms=1e9, max_segment_s=1e9)
    expected = offline_log_probs(model, transcriber.features, wave)
    assert (streamed_log_probs(recognizer, wave, 1601) - expected).abs().max() < 1e-4
    recognizer.reset()
    streamed = " ".join(s.text for s in run_stream(recognizer, wave, 1601))
    assert streamed == offline


def test_latency_is_when_the_frames_come_out(utterances):
    """latency_seconds is exact: with the audio `latency_seconds` past frame t's centre, frame t is out, and
    a hop earlier it is not."""
    cfg = streaming_config()
    recognizer = StreamingRecognizer(Transcriber(cfg, random_streaming_model(cfg)))
    assert recognizer.latency_seconds == pytest.approx((3 * (4 + 2) + 1) * 0.01 + 0.016)
    wave, t = utterances[0], 20
    centre = t * 3 * 160
    due = centre + round(recognizer.latency_seconds * 16000)
    assert sum(r.shape[0] for r in [recognizer.advance(wave[:due - 160])]) <= t
    assert recognizer.advance(wave[due - 160:due]).shape[0] >= 1
    recognizer.reset()
    assert recognizer.advance(wave[:due]).shape[0] == t + 1
