"""Non-finite audio (a float WAV with NaN or infinite samples) is refused in one line naming the file or the request,
wherever audio enters: files, the served model's base64 input, training data. Before, it was
transcribed as silence: exit 0 and an empty transcript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import asr_command, one_line_error, run_cli

from asr.audio import AudioError, load_audio
from asr.checkpoint import save_checkpoint
from asr.config import RecognizerConfig, from_dict
from asr.data.dataset import SpeechDataset, Utterance
from asr.features import FeatureExtractor
from asr.model import SpeechModel
from asr.pyfunc import RequestError, SpeechRecognitionPyfunc, audio_to_base64
from asr.text import VOCAB
from asr.transcribe import Transcriber

RATE = 16000


def float_wav(path: Path, bad: dict[int, float], channels: int = 1) -> Path:
    """One second of a 440 Hz tone as a 32-bit float WAV, with the given samples (of channel 0) replaced."""
    t = np.arange(RATE) / RATE
    data = np.repeat((0.3 * np.sin(2 * np.pi * 440 * t))[:, None], channels, axis=1).astype(np.float32)
    for i, value in bad.items():
        data[i, channels - 1] = value
    sf.write(path, data, RATE, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    cfg = from_dict(RecognizerConfig, {"rnn_dim": 16, "rnn_layers": 1, "cnn_channels": 4})
    torch.manual_seed(0)
    return Transcriber(cfg, SpeechModel.from_config(cfg, len(VOCAB)))


@pytest.mark.parametrize("bad, count", [({10: np.nan, 20: np.nan, 30: np.nan}, 3), ({5000: np.inf}, 1)])
def test_a_file_with_nan_or_inf_samples_is_refused_naming_it(tmp_path, bad, count):
    path = float_wav(tmp_path / "broken.wav", bad)
    with pytest.raises(AudioError, match=rf"^{path}: {count} samples? not finite"):
        load_audio(path)
    assert load_audio(float_wav(tmp_path / "clean.wav", {})).isfinite().all()


def test_one_infinite_sample_in_the_second_channel_of_a_stereo_file(tmp_path):
    path = float_wav(tmp_path / "stereo.wav", {123: -np.inf}, channels=2)
    with pytest.raises(AudioError, match="1 sample not finite"):
        load_audio(path)


def test_the_served_model_answers_bad_request_for_nan_audio(tmp_path, transcriber, monkeypatch):
    monkeypatch.setenv("ASR_SERVE_ALLOWED_ROOTS", str(tmp_path))  # so a path reaches the audio reader
    model = SpeechRecognitionPyfunc()
    model.transcriber = transcriber
    broken = float_wav(tmp_path / "broken.wav", {100: np.nan})
    for audio, named in ((str(broken), str(broken)), (audio_to_base64(broken), "base64 audio")):
        with pytest.raises(RequestError, match=f"^{named}: 1 sample not finite"):
            model.predict(None, pd.DataFrame({"audio": [audio]}))
    assert len(model.predict(None, pd.DataFrame({"audio": [str(float_wav(tmp_path / "ok.wav", {}))]}))) == 1


def test_training_data_skips_and_counts_it(tmp_path):
    broken = float_wav(tmp_path / "1-2-0000.wav", {7: np.nan})
    clean = float_wav(tmp_path / "1-2-0001.wav", {})
    utts = [Utterance("1-2-0000", broken, "A TONE", "1", "2"), Utterance("1-2-0001", clean, "A TONE", "1", "2")]
    dataset = SpeechDataset(utts, FeatureExtractor(sample_rate=RATE, n_mfcc=13, n_mels=40, win_ms=25, hop_ms=10))
    lengths = dataset.precompute()
    assert len(lengths) == 1 and [u.file_id for u in dataset.utterances] == ["1-2-0001"]
    assert len(dataset.unreadable) == 1 and "not finite" in dataset.unreadable[0]


@pytest.mark.slow  # a CLI subprocess
def test_asr_transcribe_fails_in_one_line(tmp_path, transcriber):
    checkpoint = save_checkpoint(tmp_path / "model.pt", transcriber.cfg, transcriber.fp32_model)
    broken = float_wav(tmp_path / "broken.wav", {100: np.nan})
    proc = run_cli(asr_command() + ["transcribe", "--model-uri", str(checkpoint), str(broken)], cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert f"{broken}: 1 sample not finite" in proc.stderr
