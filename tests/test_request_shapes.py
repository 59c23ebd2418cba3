"""The served model reads every request shape MLflow's scoring server accepts (dataframe_records, dataframe_split,
`inputs` and `instances` as records, columns or a list of audio strings, CSV): one recording in, one text out,
the same text whatever the shape; a request with no recording in it is a RequestError (HTTP 400) saying what to
send. In-process, with the values the scoring server's parser hands predict; tests/test_serving.py sends the same
shapes over real HTTP to `mlflow models serve`.

Paths in a request (`audio`, the `lm` and `lexicon` params) are read only where the server's ASR_SERVE_ALLOWED_ROOTS
allows: inside a folder it names, after symlinks and `..` are resolved; the refusal is the same whether or not the
file exists. Base64 audio, raw samples and the model's own files always work."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from mlflow.exceptions import MlflowException

from asr import UserError
from asr.config import RecognizerConfig, from_dict
from asr.lm import write_lexicon
from asr.model import SpeechModel
from asr.pyfunc import ROOTS_ENV, RequestError, SpeechRecognitionPyfunc, audio_to_base64, signature
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


def test_every_shape_gives_one_text_per_recording(model, chirp, monkeypatch):
    monkeypatch.setenv("ASR_SERVE_ALLOWED_ROOTS", str(chirp.parent))  # paths are read only under allowed folders
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


def test_decoder_settings_are_refused_before_any_audio_is_read(model, tmp_path, monkeypatch):
    monkeypatch.setenv("ASR_SERVE_ALLOWED_ROOTS", str(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    missing = str(tmp_path / "not-read.flac")  # reading it would fail with "no such file"
    with pytest.raises(RequestError, match="has no words"):
        model.predict(None, pd.DataFrame({"audio": [missing]}), params={"lexicon": str(empty)})
    with pytest.raises(RequestError, match="--decoder: 'nope' not among greedy, beam"):
        model.predict(None, pd.DataFrame({"audio": [missing]}), params={"decoder": "nope"})


def test_greedy_with_an_lm_or_lexicon_is_a_bad_request(model, tmp_path):
    """Contradicting settings are the answer whatever the paths say: checked before the paths and the audio (none
    of these files exists, and no folder is allowed)."""
    missing = str(tmp_path / "not-read.flac")
    for given in ({"lm": "/srv/lm.arpa"}, {"lexicon": "/srv/lexicon.txt"}):
        with pytest.raises(RequestError) as e:
            model.predict(None, pd.DataFrame({"audio": [missing]}), params={"decoder": "greedy", **given})
        name, path = next(iter(given.items()))
        assert str(e.value).startswith(f"--decoder greedy contradicts --{name} {path} (") and "\n" not in str(e.value)


def test_the_signature_leaves_the_request_shape_to_predict():
    """A column schema makes MLflow reshape requests before predict sees them (a list of audio strings became zero
    rows); the decoder params stay in the signature, where MLflow checks their types."""
    sig = signature()
    assert sig.inputs is None and sig.outputs.input_names() == ["text"]
    assert [p.name for p in sig.params.params] == ["decoder", "beam_size", "lm", "lexicon", "lm_weight", "word_score"]


# ---------------------------------------------------------------- paths in a request

def refusal(model: SpeechRecognitionPyfunc, audio: str, params: dict | None = None) -> str:
    with pytest.raises(RequestError) as e:
        model.predict(None, pd.DataFrame({"audio": [audio]}), params=params)
    return str(e.value)


@pytest.fixture
def folders(tmp_path: Path, chirp: Path) -> tuple[Path, Path]:
    """(allowed, outside): two sibling folders holding the same audio file and a readable lexicon."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder in (allowed, outside):
        folder.mkdir()
        shutil.copy(chirp, folder / "a.flac")
        write_lexicon(["hello", "world"], folder / "lexicon.txt")
    return allowed, outside


def test_paths_are_off_by_default(model, chirp, folders, monkeypatch):
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    _, outside = folders
    existing, missing = str(outside / "a.flac"), str(outside / "no-such.flac")
    # one answer whether or not the file is there, naming the setting and never the file
    message = refusal(model, existing)
    assert message == refusal(model, missing) == refusal(model, f"{outside}/{'a' * 300}.flac")  # too long a name
    assert ROOTS_ENV in message and "base64" in message and existing not in message
    for name in ("lm", "lexicon"):
        message = refusal(model, audio_to_base64(chirp), {name: str(outside / "lexicon.txt")})
        assert message == refusal(model, audio_to_base64(chirp), {name: str(outside / "no-such.txt")})
        assert ROOTS_ENV in message and f"`{name}`" in message and str(outside) not in message
    # the audio itself still works: base64 file bytes and raw samples
    samples, rate = sf.read(chirp, dtype="float32")
    (text,) = texts(model, pd.DataFrame({"audio": [audio_to_base64(chirp)]}))
    assert texts(model, pd.DataFrame({"samples": [samples.tolist()], "sample_rate": [rate]})) == [text]


def test_paths_are_read_only_inside_the_allowed_roots(model, chirp, folders, tmp_path, monkeypatch):
    allowed, outside = folders
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv(ROOTS_ENV, os.pathsep.join([str(tmp_path / "elsewhere"), str(allowed)]))
    (text,) = texts(model, pd.DataFrame({"audio": [audio_to_base64(chirp)]}))
    assert texts(model, pd.DataFrame({"audio": [str(allowed / "a.flac")]})) == [text]
    # a lexicon inside is read (an empty one says so); the escapes below are not
    (allowed / "empty.txt").write_text("")
    with pytest.raises(RequestError, match="has no words"):
        model.predict(None, pd.DataFrame({"audio": [audio_to_base64(chirp)]}),
                      params={"lexicon": str(allowed / "empty.txt")})

    # ways out of the root: `..`, a symlink inside pointing outside, a sibling whose name starts with the root's
    (allowed / "link.flac").symlink_to(outside / "a.flac")
    sibling = Path(f"{allowed}-not")
    sibling.mkdir()
    shutil.copy(chirp, sibling / "a.flac")
    # (and a name too long for the file system is no file, not a server error)
    escapes = [f"{allowed}/../outside/a.flac", str(allowed / "link.flac"), str(sibling / "a.flac"),
               f"{allowed}/{'a' * 300}.flac"]
    for path in escapes:
        message = refusal(model, path)
        assert ROOTS_ENV in message and path not in message, path
    for name in ("lm", "lexicon"):
        message = refusal(model, audio_to_base64(chirp), {name: f"{allowed}/../outside/lexicon.txt"})
        assert ROOTS_ENV in message and f"`{name}`" in message


def test_a_missing_file_inside_an_allowed_root_says_so(model, folders, monkeypatch):
    """A path inside the root where no file is: "no such file", naming neither the path nor the root; a missing
    file outside still gets the refusal that is the same whether or not the file exists."""
    allowed, outside = folders
    monkeypatch.setenv(ROOTS_ENV, str(allowed))
    message = refusal(model, str(allowed / "no-such.flac"))
    assert "no such file" in message and ROOTS_ENV in message and str(allowed) not in message, message
    message = refusal(model, str(outside / "no-such.flac"))
    assert "no such file" not in message and message == refusal(model, str(outside / "a.flac"))


def test_a_root_named_through_a_symlink_allows_its_real_folder(model, chirp, folders, tmp_path, monkeypatch):
    allowed, _ = folders
    (tmp_path / "alias").symlink_to(allowed, target_is_directory=True)
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path / "alias"))
    (text,) = texts(model, pd.DataFrame({"audio": [audio_to_base64(chirp)]}))
    assert texts(model, pd.DataFrame({"audio": [str(allowed / "a.flac"), str(tmp_path / "alias/a.flac")]})
                 ) == [text, text]


@pytest.mark.parametrize("setting", ["relative/folder", "/no/such/folder"])
def test_a_setting_that_cannot_work_is_refused_before_any_audio_is_read(model, tmp_path, monkeypatch, setting):
    monkeypatch.setenv(ROOTS_ENV, setting)
    message = refusal(model, str(tmp_path / "not-read.flac"))
    assert message.startswith(f"{ROOTS_ENV} names {setting!r}") and "\n" not in message


@pytest.mark.parametrize("setting", ["data", "/no/such/folder"])
def test_a_setting_that_cannot_work_stops_the_model_loading(monkeypatch, setting):
    """The check runs first thing in load_context (what `mlflow models serve` and mlflow.pyfunc.load_model call),
    so the server fails at start with the one line instead of answering every request 400; a plain UserError, not
    an MlflowException a host would wrap."""
    monkeypatch.setenv(ROOTS_ENV, setting)
    with pytest.raises(UserError) as e:
        SpeechRecognitionPyfunc().load_context(SimpleNamespace(artifacts={}))
    message = str(e.value)
    assert not isinstance(e.value, MlflowException)
    assert message.startswith(f"{ROOTS_ENV} names {setting!r}") and "\n" not in message


def test_the_models_own_lexicon_is_always_allowed(model, chirp, folders, monkeypatch):
    """What the model carries is not a request path: naming it in a request reads nothing new."""
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    _, outside = folders
    own = SpeechRecognitionPyfunc()
    lexicon = str(outside / "lexicon.txt")
    decode = dataclasses.replace(model.transcriber.decode_cfg, decoder="beam", lexicon=lexicon)
    own.transcriber = Transcriber(model.transcriber.cfg, model.transcriber.fp32_model, decode)
    b64 = audio_to_base64(chirp)
    assert texts(own, pd.DataFrame({"audio": [b64]})) == own.predict(
        None, pd.DataFrame({"audio": [b64]}), params={"lexicon": lexicon})["text"].tolist()


def test_base64_that_is_not_audio_says_so(model):
    """Bytes that decode as base64 but are no audio: the reason, not advice about paths (`asr validate` sends a
    corrupt file's bytes this way)."""
    import base64

    message = refusal(model, base64.b64encode(b"not audio at all").decode())
    assert message.startswith("base64 audio: cannot read audio (") and ROOTS_ENV not in message, message
