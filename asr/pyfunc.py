"""The MLflow pyfunc flavour of a trained model: audio in, text out.

Input is a DataFrame with a string column `audio`; each value is a path to an audio file or the
base64 encoding of an audio file's bytes (WAV, FLAC, ... anything soundfile reads).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import mlflow
import pandas as pd
import soundfile as sf

from asr.audio import AudioError, load_audio, to_mono_16k


class SpeechRecognitionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from asr.transcribe import Transcriber

        self.transcriber = Transcriber.from_checkpoint(context.artifacts["checkpoint"])

    def _wave(self, value: str):
        rate = self.transcriber.sample_rate
        if len(value) < 4096 and Path(value).is_file():
            return load_audio(value, rate)
        try:
            data, sr = sf.read(io.BytesIO(base64.b64decode(value, validate=True)), dtype="float32")
        except (binascii.Error, ValueError, sf.LibsndfileError, RuntimeError):
            raise AudioError("audio must be a path to an existing audio file or base64-encoded audio bytes") from None
        return to_mono_16k(data, sr, rate)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        waves = [self._wave(v) for v in model_input["audio"]]
        return pd.DataFrame({"text": self.transcriber.transcribe(waves)})


def audio_to_base64(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


# Models-from-code: MLflow loads this file to build the model, so nothing is unpickled at load time.
mlflow.models.set_model(SpeechRecognitionPyfunc())
