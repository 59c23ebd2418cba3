"""The MLflow pyfunc flavour of a trained model: audio in, text out.

Input is a DataFrame, one row per recording, with either
  - `audio`: a path to an audio file, or the base64 encoding of an audio file's bytes (WAV, FLAC, ... anything
    soundfile reads), or
  - `samples` (a list of floats in [-1, 1], mono) and `sample_rate` (Hz).
Optional params pick the decoder per request: decoder, beam_size, lm, lexicon, lm_weight, word_score (LM and
lexicon are paths on the serving machine).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf

from asr.audio import AudioError, load_audio, to_mono_16k
from asr.config import DecodeConfig

# Decoder settings a request may change (they become the model signature's params).
REQUEST_PARAMS = ("decoder", "beam_size", "lm", "lexicon", "lm_weight", "word_score")


class SpeechRecognitionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from asr.transcribe import Transcriber

        self.transcriber = Transcriber.from_checkpoint(context.artifacts["checkpoint"])

    def _wave(self, row: pd.Series):
        rate = self.transcriber.sample_rate
        value = row.get("audio")
        if isinstance(value, str) and value:
            if len(value) < 4096 and Path(value).is_file():
                return load_audio(value, rate)
            try:
                data, sr = sf.read(io.BytesIO(base64.b64decode(value, validate=True)), dtype="float32")
            except (binascii.Error, ValueError, sf.LibsndfileError, RuntimeError):
                raise AudioError("audio must be a path to an existing audio file or base64-encoded audio "
                                 "bytes") from None
            return to_mono_16k(data, sr, rate)
        samples, sr = row.get("samples"), row.get("sample_rate")
        if samples is None or sr is None or (isinstance(sr, float) and np.isnan(sr)):
            raise AudioError("each row needs `audio` (a path or base64 audio bytes) or `samples` plus `sample_rate`")
        data = np.asarray(samples, dtype=np.float32)
        if data.ndim != 1 or not np.isfinite(data).all():
            raise AudioError("`samples` must be a flat list of finite floats (mono)")
        return to_mono_16k(data, int(sr), rate)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        waves = [self._wave(row) for _, row in model_input.iterrows()]
        requested = {k: v for k, v in (params or {}).items() if k in REQUEST_PARAMS}
        if requested:
            from asr.decoding import make_decoder

            decoder = make_decoder(dataclasses.replace(self.transcriber.decode_cfg, **requested))
            texts = self.transcriber.decode(self.transcriber.emissions(waves), decoder)
        else:
            texts = self.transcriber.transcribe(waves)
        return pd.DataFrame({"text": texts})


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
