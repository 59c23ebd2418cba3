"""Validation by file id: transcribe one utterance with a registered model and score it against its transcript."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd

from asr.audio import load_audio
from asr.data.dataset import DataError, Utterance, find_utterance
from asr.loading import ModelSource, load_pyfunc, model_source
from asr.metrics import cer, wer
from asr.settings import ValidateConfig
from asr.tracking.lineage import model_tags
from asr.tracking.registry import model_uri
from asr.tracking.store import setup, setup_uri, side_run


@dataclass
class ValidationResult:
    utterance: Utterance
    model_uri: str         # as asked for, e.g. models:/NAME/Production
    source: ModelSource    # the version that was scored (the stage or alias resolved when the model loaded)
    prediction: str
    target: str
    wer: float
    cer: float


def no_letters(file_id: str, utterance: Utterance) -> DataError:
    """The error for an utterance whose transcript has nothing the model could be scored against."""
    trans = utterance.path.parent / f"{utterance.speaker}-{utterance.chapter}.trans.txt"
    return DataError(f"{file_id}: its transcript has no letters to score against (line in {trans}: "
                     f"{(file_id + ' ' + utterance.transcript).strip()!r})")


def validate(cfg: ValidateConfig) -> ValidationResult:
    from asr.pyfunc import audio_to_base64

    # Cheap checks first: a bad id or dataset fails before the model is loaded.
    utterance = find_utterance(cfg.file_id, cfg.dataset or None)
    if not any(ch.isalnum() for ch in utterance.transcript):  # a score against nothing would be meaningless
        raise no_letters(cfg.file_id, utterance)
    load_audio(utterance.path)  # unreadable audio: one line naming the file, before the model is loaded
    uri = model_uri(cfg.registered_model, cfg.model_stage, cfg.model_alias, cfg.model_version)
    setup_uri(uri)  # a tracking server that does not answer: one line naming the model, in seconds
    setup(cfg.experiment)
    source = model_source(uri)
    model = load_pyfunc(source.uri)
    target = model.unwrap_python_model().transcriber.text.normalized(utterance.transcript)  # the model's letters
    if not target:
        raise no_letters(cfg.file_id, utterance)
    # The file's bytes, not its path: the model reads paths only under the folders a server allows
    # (ASR_SERVE_ALLOWED_ROOTS), and this command is trusted with any file the user can read.
    audio = audio_to_base64(utterance.path)
    prediction = str(model.predict(pd.DataFrame({"audio": [audio]}))["text"][0])
    result = ValidationResult(utterance, uri, source, prediction, target, wer([target], [prediction]),
                              cer([target], [prediction]))
    params = {"model_uri": uri, "file_id": cfg.file_id, "audio": str(utterance.path)}
    with side_run("validate", cfg.file_id, params, model_tags(source)):
        mlflow.log_metrics({"utterance_wer": result.wer, "utterance_cer": result.cer})
        mlflow.log_dict({"file_id": cfg.file_id, "target": target, "prediction": prediction}, "validation.json")
    return result
