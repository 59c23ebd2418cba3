"""The served model reads every request shape MLflow's scoring server accepts (dataframe_records, dataframe_split,
`inputs` and `instances` as records, columns or a list of audio strings, CSV): one recording in, one text out,
the same text whatever the shape; a request with no recording in it is a RequestError (HTTP 400) saying what to
send. In-process, with the values the scoring server's parser hands predict; tests/test_serving.py sends the same
shapes over real HTTP to `mlflow models serve`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from asr.config import RecognizerConfig, from_dict
from asr.model import SpeechModel
from asr.pyfunc import RequestError, SpeechRecognitionPyfunc, audio_to_base64, signature
from asr.text import VOCAB
from asr.transcribe import Transcriber

RATE = 16000


@pytest.fixture(scope="module")
def model() -> SpeechRecognitionPyfunc:
    cfg = from_dict(RecognizerConfig, {"rnn_dim": 16, "rnn_layers": 1, "cnn_channels": 4})
    torch.manual_seed(0)
    model = SpeechRecognitionPyfunc()
    model.transcriber = Transcriber(cfg, SpeechModel.from_config(cfg, len(VOCAB)))
    return model


@pytest.fixture(scope="module")
def chirp(tmp_path_factory) -> Path:
    """Two seconds of a rising tone with noise: audio that a random model turns into a non-empty text."""
    t = np.arange(2 * RATE) / RATE
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) + 0.05 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("shapes") / "chirp.flac"
    sf.write(path, wave.astype(np.float32), RATE)
    return path


def texts(model: SpeechRecognitionPyfunc, model_input) -> list[str]:
    return model.predict(None, model_input)["text"].tolist()


def test_every_shape_gives_one_text_per_recording(model, chirp):
    path, b64 = str(chirp), audio_to_base64(chirp)
    samples, rate = sf.read(chirp, dtype="float32")
    (text,) = texts(model, pd.DataFrame({"audio": [b64]}))  # dataframe_records, dataframe_split, CSV
    assert text
    # `inputs` as a list of audio strings (this gave zero texts for one recording), one string, columns (one value
    # or a list), records; `instances` as records reaches predict as columns
    assert texts(model, np.array([b64])) == [text]
    assert texts(model, np.array([path, b64])) == [text, text]
    assert texts(model, np.array(path)) == [text]
    assert texts(model, {"audio": np.array([b64])}) == [text]
    assert texts(model, {"audio": np.array(path)}) == [text]
    assert texts(model, {"audio": np.array([path, b64])}) == [text, text]
    assert texts(model, [{"audio": np.array(path)}, {"audio": b64}]) == [text, text]
    assert texts(model, pd.Series([path, b64])) == [text, text]
    # raw samples: as a record, and as columns (one recording's values, or one row per recording)
    (heard,) = texts(model, pd.DataFrame({"samples": [samples.tolist()], "sample_rate": [rate]}))
    assert texts(model, {"samples": np.array([samples]), "sample_rate": np.array([rate])}) == [heard]
    assert texts(model, {"samples": samples, "sample_rate": np.array(rate)}) == [heard]


@pytest.mark.parametrize("model_input, expected", [
    (np.array([1, 2]), "a list input must hold audio strings"),
    ([], "a list input must hold audio strings"),
    (pd.DataFrame(), "no `audio` or `samples` column"),
    (pd.DataFrame(columns=["/srv/audio/a.flac"]), "no `audio` or `samples` column (columns: '/srv/audio/a.flac')"),
    ({"wav": ["/srv/audio/a.flac"]}, "no `audio` or `samples` column (columns: 'wav')"),
    ({"audio": ["a", "b"], "sample_rate": [16000]}, "different lengths (audio 2, sample_rate 1)"),
    (pd.DataFrame({"audio": []}), "holds no recordings"),
    (3.5, "cannot read recordings from a float"),
])
def test_a_request_with_no_recording_says_what_to_send(model, model_input, expected):
    with pytest.raises(RequestError) as e:
        model.predict(None, model_input)
    assert expected in str(e.value) and '{"dataframe_records": [{"audio": ' in str(e.value)


def test_samples_that_are_no_list_of_floats_are_refused_in_one_line(model):
    with pytest.raises(RequestError, match="CSV cannot carry"):  # what a CSV `samples` column holds
        model.predict(None, pd.DataFrame({"samples": ["[0.1, 0.2]"], "sample_rate": [16000]}))
    with pytest.raises(RequestError, match="flat list of finite floats"):
        model.predict(None, pd.DataFrame({"samples": [["a", "b"]], "sample_rate": [16000]}))
    with pytest.raises(RequestError, match="needs `audio`"):  # a row of a mixed request with neither
        model.predict(None, pd.DataFrame([{"samples": [0.0] * 1600, "sample_rate": 16000}, {"sample_rate": 16000}]))


def test_decoder_settings_are_refused_before_any_audio_is_read(model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    missing = str(tmp_path / "not-read.flac")  # reading it would fail with "no such file"
    with pytest.raises(RequestError, match="has no words"):
        model.predict(None, pd.DataFrame({"audio": [missing]}), params={"lexicon": str(empty)})
    with pytest.raises(RequestError, match="--decoder: 'nope' not among greedy, beam"):
        model.predict(None, pd.DataFrame({"audio": [missing]}), params={"decoder": "nope"})


def test_the_signature_leaves_the_request_shape_to_predict():
    """A column schema makes MLflow reshape requests before predict sees them (a list of audio strings became zero
    rows); the decoder params stay in the signature, where MLflow checks their types."""
    sig = signature()
    assert sig.inputs is None and sig.outputs.input_names() == ["text"]
    assert [p.name for p in sig.params.params] == ["decoder", "beam_size", "lm", "lexicon", "lm_weight", "word_score"]
