"""The MLflow pyfunc flavour of a trained model: audio in, text out.

Input is one row per recording, with either
  - `audio`: the base64 encoding of an audio file's bytes (WAV, FLAC, ... anything soundfile reads), or a path
    to an audio file under one of the folders ASR_SERVE_ALLOWED_ROOTS names, or
  - `samples` (a list of floats in [-1, 1], mono) and `sample_rate` (Hz),
in any shape MLflow's scoring server accepts: dataframe_records, dataframe_split, `inputs` or `instances` as
records, as columns ({"audio": [...]}) or as a list of audio strings, or CSV with an `audio` header. Every shape
gives the same text for the same audio; one recording in is one text out.
The model decodes with its own decoder (the LM, lexicon and tuned settings it was trained with; greedy for a
model without one). Optional params change it per request: decoder, beam_size, lm, lexicon, lm_weight, word_score
(LM and lexicon are paths on the serving machine, under ASR_SERVE_ALLOWED_ROOTS); a param left out keeps the
model's own setting, and `decoder=greedy` decodes greedily (with an `lm` or `lexicon`, which need beam search, it
is refused). The model's decoder is built once, at load;
decoders for other settings are built on first use and a few are kept (asr.transcribe.Transcriber.decoder_for).

Paths in a request are off unless the server's environment allows them: whoever can reach a scoring server's
port could otherwise make it read any file it can. `predict` is what every host of the model calls (`mlflow models
serve`, its Docker image, MLServer, Spark UDFs, a user's script) and none of them says whose input it passes, so the
rule holds for every caller of `predict`; the project's own commands read files themselves and pass the bytes. The
model's own files (its checkpoint, and an LM or lexicon it carries) are always allowed.

Bad input (unreadable audio, no recording in the request, a decoder setting that cannot work, more than
ASR_MAX_REQUEST_SECONDS of audio in one request, a path outside ASR_SERVE_ALLOWED_ROOTS) raises RequestError,
which MLflow's scoring server turns into HTTP 400 with the message. A path inside those folders where no file is
says so. An ASR_SERVE_ALLOWED_ROOTS that cannot work (a relative path, a missing folder) stops the model loading
(load_context raises UserError), so `mlflow models serve` fails at start.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from asr import UserError, first_line
from asr.audio import AudioError, load_audio, to_mono_16k
from asr.config import DecodeConfig

# Decoder settings a request may change (they become the model signature's params).
REQUEST_PARAMS = ("decoder", "beam_size", "lm", "lexicon", "lm_weight", "word_score")
COLUMNS = ("audio", "samples", "sample_rate")
PATH_PARAMS = ("lm", "lexicon")  # request params that name files on the server
ROOTS_ENV = "ASR_SERVE_ALLOWED_ROOTS"
# What a 400 for a request with no recording in it says to send instead.
SHAPES = ('send one row per recording: {"dataframe_records": [{"audio": "<base64>"}]}, {"inputs": '
          '{"audio": ["<base64>", ...]}}, {"inputs": ["<base64>", ...]}, CSV with an `audio` header '
          'line, or {"dataframe_records": [{"samples": [...], "sample_rate": 16000}]}')


class RequestError(UserError, MlflowException):
    """Bad input to the served model: MLflow's scoring server answers it with HTTP 400 and this message."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def not_audio(roots: tuple[Path, ...]) -> AudioError:
    """The answer to an `audio` string that is neither base64 nor a path the server may read."""
    if roots:
        return AudioError(f"audio must be base64-encoded audio bytes or the path of an audio file under the folders "
                          f"{ROOTS_ENV} names on the server")
    return AudioError(paths_off("audio must be base64-encoded audio bytes",
                                "send the file's bytes as base64, or `samples` and `sample_rate`"))


def max_request_seconds() -> float:
    """Most audio one predict call accepts, all rows together (env ASR_MAX_REQUEST_SECONDS, default 30 min):
    a request's memory is bounded by its audio, so this bounds what one request can take."""
    value = os.environ.get("ASR_MAX_REQUEST_SECONDS", "1800")
    try:
        return float(value)
    except ValueError:
        raise RequestError(f"ASR_MAX_REQUEST_SECONDS must be a number of seconds, got {value!r}") from None


def allowed_roots() -> tuple[Path, ...]:
    """The folders a request may name paths under (env ASR_SERVE_ALLOWED_ROOTS, an os.pathsep-separated list of
    absolute folders; default none: paths off), symlinks resolved. Read per request, like the other limits, and
    checked once when the model loads. Raises RequestError, in one line, for an entry that is not an absolute path
    to an existing folder."""
    value = os.environ.get(ROOTS_ENV, "")
    roots = []
    for entry in filter(None, value.split(os.pathsep)):
        if not os.path.isabs(entry) or not os.path.isdir(entry):
            raise RequestError(f"{ROOTS_ENV} names {entry!r}, which is not an absolute path to a folder; fix the "
                               f"setting ({os.pathsep}-separated absolute folders) or unset it (a server reads it "
                               f"when it starts)")
        roots.append(Path(os.path.realpath(entry)))
    return tuple(roots)


def allowed_path(value: str, roots: tuple[Path, ...]) -> Path | None:
    """`value`'s real path (symlinks resolved, `..` removed) when that lies inside one of `roots`, else None."""
    if not roots or len(value) >= 4096 or "\0" in value:
        return None
    real = Path(os.path.realpath(value))
    return real if any(real.is_relative_to(root) for root in roots) else None


def _no_file(value: str, real: Path | None) -> AudioError | None:
    """The answer to an `audio` path inside the allowed roots (`real`, from allowed_path) where no file is: None when
    `value` is no such path. The message names no path (a request's path is its sender's to know)."""
    if real is None or os.sep not in value:
        return None
    return AudioError(f"audio names a path under the folders {ROOTS_ENV} names, but no such file is there; check "
                      f"the path, or send the file's bytes as base64")


def paths_off(what: str, instead: str) -> str:
    """The 400 for a request path outside the allowed roots: the same whether or not the file exists."""
    return (f"{what}: request paths are off on this server except under the folders its {ROOTS_ENV} names "
            f"({os.pathsep}-separated, in the server's environment); {instead}")


class SpeechRecognitionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        """Loads the checkpoint and the model's own decoder. Raises UserError (one line; not an MlflowException,
        which hosts would wrap) when ASR_SERVE_ALLOWED_ROOTS cannot work, so a server fails at start, not per
        request."""
        try:
            allowed_roots()
        except RequestError as e:
            raise UserError(str(e)) from None
        from asr.decoding import read_model_decoder
        from asr.transcribe import Transcriber

        artifacts = context.artifacts
        own = read_model_decoder(artifacts["decoder"], artifacts.get("lm", ""), artifacts.get("lexicon", "")) \
            if "decoder" in artifacts else None  # a model trained without an LM decodes greedily
        self.transcriber = Transcriber.from_checkpoint(artifacts["checkpoint"], own)

    def _wave(self, row: pd.Series, budget: list[float], roots: tuple[Path, ...]):
        """One row's waveform; `budget` (seconds of audio left for this request) is checked before decoding. A path
        is read only inside `roots`, and by its real path, so a symlink cannot be swapped in after the check."""
        rate = self.transcriber.sample_rate
        value = row.get("audio")
        if isinstance(value, str) and value:
            real = allowed_path(value, roots)
            try:
                is_file = real is not None and real.is_file()
            except OSError:  # a name too long for the file system, say: no file there, like any other string
                is_file = False
            if is_file:
                _spend(budget, _duration(str(real)), value)
                return load_audio(real, rate)
            try:
                blob = io.BytesIO(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                raise _no_file(value, real) or not_audio(roots) from None
            _spend(budget, _duration(blob), "base64 audio")
            try:
                data, sr = sf.read(blob, dtype="float32")
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:  # base64, but not of audio soundfile reads
                if "/" in value[:1] or os.sep in value:  # a path that happens to be valid base64 ("/data/abcd")
                    raise _no_file(value, real) or not_audio(roots) from None
                raise AudioError(f"base64 audio: cannot read audio ({first_line(e)})") from None
            return to_mono_16k(data, sr, rate, name="base64 audio")
        samples, sr = row.get("samples"), row.get("sample_rate")
        if _missing(samples) or _missing(sr):
            raise AudioError("each row needs `audio` (base64 audio bytes) or `samples` plus `sample_rate`")
        if isinstance(samples, str):
            raise AudioError("`samples` must be a JSON list of floats (CSV cannot carry one): send it as JSON, e.g. "
                             '{"dataframe_records": [{"samples": [...], "sample_rate": 16000}]}')
        try:
            sr = float(sr)
            data = np.asarray(samples, dtype=np.float32)
        except (TypeError, ValueError):
            raise AudioError("`samples` must be a flat list of finite floats (mono) and `sample_rate` a number of "
                             "Hz") from None
        if not 1000 <= sr <= 384000:
            raise AudioError(f"sample_rate {sr:g} is not an audio rate (1000..384000 Hz)")
        _spend(budget, data.size / sr, "samples")
        if data.ndim != 1 or not np.isfinite(data).all():
            raise AudioError("`samples` must be a flat list of finite floats (mono)")
        return to_mono_16k(data, int(sr), rate)

    def _param_path(self, name: str, value: Any, roots: tuple[Path, ...]) -> Any:
        """The `lm` or `lexicon` a request asks for, as the file to read: the model's own file, a real path
        inside `roots`, or '' (none); any other path is a RequestError that says nothing about the file."""
        if not isinstance(value, str) or not value or value == getattr(self.transcriber.decode_cfg, name):
            return value
        real = allowed_path(value, roots)
        if real is None:
            raise RequestError(paths_off(f"the `{name}` param names a file on the server",
                                         f"leave `{name}` out to decode with the model's own settings"))
        return str(real)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One text per recording of `model_input`: a DataFrame, or whatever else the scoring server parsed the
        request into (`request_rows` reads them all; the hint stays DataFrame, one MLflow does not validate
        against, where any other would be checked or warned about). Decoder settings are checked before any audio
        is read."""
        try:
            from asr.decoding import check_request, with_overrides

            # MLflow fills in the signature's defaults, None: a param that is None was not asked for
            requested = {k: v for k, v in (params or {}).items() if k in REQUEST_PARAMS and v is not None}
            check_request(requested)  # a contradiction first: it is the answer whatever the paths
            roots = allowed_roots()
            for name in PATH_PARAMS:
                requested[name] = self._param_path(name, requested.get(name), roots)
            requested = {k: v for k, v in requested.items() if v is not None}
            decoder = None
            if requested:
                decoder = self.transcriber.decoder_for(with_overrides(self.transcriber.decode_cfg, requested))
            rows = request_rows(model_input)
            budget = [max_request_seconds()]
            waves = [self._wave(row, budget, roots) for _, row in rows.iterrows()]
            texts = self.transcriber.decode(self.transcriber.emissions(waves), decoder)
        except RequestError:
            raise
        except UserError as e:
            raise RequestError(str(e)) from None
        return pd.DataFrame({"text": texts})


def request_rows(model_input: Any) -> pd.DataFrame:
    """The request as one row per recording, from whatever MLflow's scoring server parsed it into: a DataFrame
    (dataframe_records, dataframe_split, CSV), a dict of columns (`inputs` as columns, `instances` as records),
    a list of records or of audio strings (`inputs`, `instances`), or one string. Raises RequestError, naming
    the shapes to send, for a request with no recording in it: one input never gives zero outputs."""
    data = model_input
    if isinstance(data, pd.Series):
        data = data.to_frame() if data.name in COLUMNS else data.to_numpy()
    if isinstance(data, str) or (isinstance(data, np.ndarray) and data.ndim == 0):
        data = [_plain(data)]
    if isinstance(data, dict):
        data = _columns(data)
    elif isinstance(data, list | tuple | np.ndarray):
        items = [_plain(x) for x in data]
        if items and all(isinstance(x, dict) for x in items):
            data = pd.DataFrame([{k: _plain(v) for k, v in x.items()} for x in items])
        elif items and all(isinstance(x, str) for x in items):
            data = pd.DataFrame({"audio": items})
        else:
            raise RequestError(f"a list input must hold audio strings (paths or base64) or records; {SHAPES}")
    if not isinstance(data, pd.DataFrame):
        raise RequestError(f"cannot read recordings from a {type(model_input).__name__}; {SHAPES}")
    if not {"audio", "samples"} & set(data.columns):
        found = ", ".join(repr(str(c))[:80] for c in data.columns) or "none"
        raise RequestError(f"the request has no `audio` or `samples` column (columns: {found}); {SHAPES}")
    if len(data) == 0:
        raise RequestError(f"the request holds no recordings; {SHAPES}")
    return data


def _columns(data: dict) -> pd.DataFrame:
    """A dict as rows: one recording when `audio` or `sample_rate` is a single value ({"audio": "..."},
    {"samples": [...], "sample_rate": 16000}), else a column per key ({"audio": [...]}) of equal lengths."""
    single = np.ndim(data["sample_rate"]) == 0 if "sample_rate" in data else np.ndim(data.get("audio", [])) == 0
    if single:
        return pd.DataFrame([{k: _plain(v) for k, v in data.items()}])
    columns = {k: [_plain(x) for x in v] if np.ndim(v) else [_plain(v)] for k, v in data.items()}
    if len({len(v) for v in columns.values()}) > 1:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in columns.items())
        raise RequestError(f"the request's columns have different lengths ({sizes}); {SHAPES}")
    return pd.DataFrame(columns)


def _plain(value: Any) -> Any:
    """A numpy scalar or 0-d array as the Python value it holds (MLflow's parser wraps JSON values in arrays)."""
    return value.item() if isinstance(value, np.ndarray | np.generic) and np.ndim(value) == 0 else value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _duration(source) -> float:
    """Seconds of audio in a file or file-like object, from its header (nothing decoded)."""
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return 0.0  # unreadable: reading it will say so
    finally:
        if hasattr(source, "seek"):
            source.seek(0)
    return info.frames / info.samplerate if info.samplerate else 0.0


def _spend(budget: list[float], seconds: float, what: str) -> None:
    budget[0] -= seconds
    if budget[0] < 0:
        raise RequestError(f"request too long: {what} takes it past {max_request_seconds():g} s of audio "
                           "(ASR_MAX_REQUEST_SECONDS on the server); send less audio per request")


def signature():
    """Output: `text`; params: decoder settings, whose default (None) means the model's own. No input schema:
    MLflow enforces one before predict sees the request, and a column schema with the `samples` array turns
    standard request shapes into zero rows (a list of audio strings), one row of arrays (columns, `instances`) or a
    parse error (CSV); `request_rows` reads every shape itself, with the errors saying what to send."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    defaults = DecodeConfig()
    kinds = {str: "string", int: "long", float: "double"}
    params = ParamSchema([ParamSpec(name, kinds[type(getattr(defaults, name))], None) for name in REQUEST_PARAMS])
    return ModelSignature(inputs=None, outputs=Schema([ColSpec("string", "text")]), params=params)


def audio_to_base64(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


# Models-from-code: MLflow loads this file to build the model, so nothing is unpickled at load time.
mlflow.models.set_model(SpeechRecognitionPyfunc())
