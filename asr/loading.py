"""The front door: a recognizer from wherever a trained model lives (`asr.load`).

A reference is a checkpoint file, a training output folder (OUTPUT_DIR/RUN_ID), a local MLflow model folder, a
run id, or a runs:/, models:/, mlflow-artifacts: or file: URI. Registry references are read from MLflow's current
tracking URI (MLFLOW_TRACKING_URI, or what `mlflow.set_tracking_uri` set).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from asr import UserError, redact
from asr.checkpoint import MODEL
from asr.config import DecodeConfig
from asr.decoding import DECODER_FILE, read_model_decoder, with_overrides
from asr.transcribe import Transcriber

CHECKPOINT_NAMES = (MODEL, "best.pt", "last.pt")  # what a training output folder holds, most final first
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:", "file:")


class ModelNotFound(UserError):
    """A model reference that names nothing loadable, with what to do about it."""


def load_pyfunc(uri: str) -> mlflow.pyfunc.PyFuncModel:
    """The MLflow pyfunc model at `uri`. Raises ModelNotFound, in one line naming the tracking store, when the
    registry or the run has no such model."""
    path = sys.path[:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return mlflow.pyfunc.load_model(uri)
    except MlflowException as e:
        raise ModelNotFound(f"cannot load {uri} from {redact(mlflow.get_tracking_uri())}: "
                            f"{e.message.splitlines()[0]} (train and register one with `asr train`)") from None
    finally:
        # MLflow puts the model's code/ folder first on sys.path and leaves it there. This process already runs its
        # own asr; processes it spawns later inherit sys.path and would import the model's copy instead (an older
        # layout, or the model side alone) and fail.
        sys.path[:] = path


def tracking_reference(ref: str) -> str | None:
    """The URI `ref` is loaded from when that goes through the tracking store (a models:/ or runs:/ URI, or a run
    id, which means runs:/RUN_ID/model), else None (a local file or folder, a file: URI)."""
    if Path(ref).exists():
        return None
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        return f"runs:/{ref}/model"
    return ref if ref.startswith(("models:/", "runs:/", "mlflow-artifacts:")) else None


def load_transcriber(ref: str, decode: DecodeConfig | None = None,
                     overrides: Mapping[str, Any] | None = None) -> Transcriber:
    """A Transcriber for the model `ref` names (see the module docstring for the forms), decoding with `decode`
    when given, else with the model's own decoder (greedy for a model without one) changed by the settings in
    `overrides` (asr.decoding.with_overrides). Raises ModelNotFound for a reference that names nothing,
    CheckpointError for a file that is not a checkpoint."""
    transcriber = _load(ref)
    if decode is not None:
        transcriber.configure(decode)
    elif overrides:
        transcriber.configure(with_overrides(transcriber.decode_cfg, overrides))
    return transcriber


def from_checkpoint(path: Path) -> Transcriber:
    """A checkpoint's Transcriber, decoding with the decoder of its training run's folder when it is that run's
    final model (model.pt with decoder.json beside it), else greedily."""
    own = path.with_name(DECODER_FILE)
    return Transcriber.from_checkpoint(path, read_model_decoder(own) if path.name == MODEL and own.is_file()
                                       else None)


def _load(ref: str) -> Transcriber:
    path = Path(ref)
    if path.is_file():
        return from_checkpoint(path)
    if path.is_dir() and not (path / "MLmodel").is_file():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return from_checkpoint(path / name)
        raise ModelNotFound(f"{ref}: no {', '.join(CHECKPOINT_NAMES[:-1])} or {CHECKPOINT_NAMES[-1]} in this folder")
    uri = tracking_reference(ref) or ref
    if not (path.is_dir() or uri.startswith(MLFLOW_SCHEMES)):
        raise ModelNotFound(f"{ref}: not a checkpoint, a model folder, a run id, or a runs:/ or models:/ URI")
    return load_pyfunc(uri).unwrap_python_model().transcriber
