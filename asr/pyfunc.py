"""The MLflow pyfunc flavour of a trained model: audio in, text out.

Input is a DataFrame, one row per recording, with either
  - `audio`: a path to an audio file, or the base64 encoding of an audio file's bytes (WAV, FLAC, ... anything
    soundfile reads), or
  - `samples` (a list of floats in [-1, 1], mono) and `sample_rate` (Hz).
Optional params pick the decoder per request: decoder, beam_size, lm, lexicon, lm_weight, word_score (LM and
lexicon are paths on the serving machine).

Bad input (unreadable audio, a missing column, a decoder setting that cannot work, more than
ASR_MAX_REQUEST_SECONDS of audio in one request) raises RequestError, which MLflow's scoring server turns into
HTTP 400 with the message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from asr import UserError
from asr.audio import AudioError, load_audio, to_mono_16k
from asr.config import DecodeConfig

# Decoder settings a request may change (they become the model signature's params).
REQUEST_PARAMS = ("decoder", "beam_size", "lm", "lexicon", "lm_weight", "word_score")


class RequestError(UserError, MlflowException):
    """Bad input to the served model: MLflow's scoring server answers it with HTTP 400 and this message."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def max_request_seconds() -> float:
    """Most audio one predict call accepts, all rows together (env ASR_MAX_REQUEST_SECONDS, default 30 min):
    a request's memory is bounded by its audio, so this bounds what one request can take."""
    value = os.environ.get("ASR_MAX_REQUEST_SECONDS", "1800")
    try:
        return float(value)
    except ValueError:
        raise RequestError(f"ASR_MAX_REQUEST_SECONDS must be a number of seconds, got {value!r}") from None


class SpeechRecognitionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from asr.transcribe import Transcriber

        self.transcriber = Transcriber.from_checkpoint(context.artifacts["checkpoint"])

    def _wave(self, row: pd.Series, budget: list[float]):
        """One row's waveform; `budget` (seconds of audio left for this request) is checked before decoding."""
        rate = self.transcriber.sample_rate
        value = row.get("audio")
        if isinstance(value, str) and value:
            if len(value) < 4096 and Path(value).is_file():
                _spend(budget, _duration(value), value)
                return load_audio(value, rate)
            try:
                blob = io.BytesIO(base64.b64decode(value, validate=True))
                _spend(budget, _duration(blob), "base64 audio")
                data, sr = sf.read(blob, dtype="float32")
            except (binascii.Error, ValueError, sf.LibsndfileError, RuntimeError):
                raise AudioError("audio must be a path to an existing audio file or base64-encoded audio "
                                 "bytes") from None
            return to_mono_16k(data, sr, rate, name="base64 audio")
        samples, sr = row.get("samples"), row.get("sample_rate")
        if samples is None or sr is None or (isinstance(sr, float) and np.isnan(sr)):
            raise AudioError("each row needs `audio` (a path or base64 audio bytes) or `samples` plus `sample_rate`")
        if not 1000 <= float(sr) <= 384000:
            raise AudioError(f"sample_rate {sr} is not an audio rate (1000..384000 Hz)")
        _spend(budget, len(samples) / float(sr), "samples")
        data = np.asarray(samples, dtype=np.float32)
        if data.ndim != 1 or not np.isfinite(data).all():
            raise AudioError("`samples` must be a flat list of finite floats (mono)")
        return to_mono_16k(data, int(sr), rate)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            budget = [max_request_seconds()]
            waves = [self._wave(row, budget) for _, row in model_input.iterrows()]
            requested = {k: v for k, v in (params or {}).items() if k in REQUEST_PARAMS}
            if requested:
                from asr.decoding import make_decoder

                decoder = make_decoder(dataclasses.replace(self.transcriber.decode_cfg, **requested))
                texts = self.transcriber.decode(self.transcriber.emissions(waves), decoder)
            else:
                texts = self.transcriber.transcribe(waves)
        except RequestError:
            raise
        except UserError as e:
            raise RequestError(str(e)) from None
        return pd.DataFrame({"text": texts})


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
    """Inputs: `audio` or `samples` + `sample_rate`; output: `text`; params: decoder settings."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    defaults = DecodeConfig()
    kinds = {str: "string", int: "long", float: "double"}
    params = ParamSchema([ParamSpec(name, kinds[type(getattr(defaults, name))], getattr(defaults, name))
                          for name in REQUEST_PARAMS])
    inputs = Schema([ColSpec("string", "audio", required=False), ColSpec(Array("double"), "samples", required=False),
                     ColSpec("long", "sample_rate", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "text")]), params=params)


def audio_to_base64(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


# Models-from-code: MLflow loads this file to build the model, so nothing is unpickled at load time.
mlflow.models.set_model(SpeechRecognitionPyfunc())
