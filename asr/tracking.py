"""MLflow: where runs go, how a trained model is logged, registered and promoted, and how it is found again.

Promotion sets the `production` alias (the MLflow 3 way) and also moves the version to the
classic `Production` stage, archiving the previous one, so stage-based workflows keep working.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from asr import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PRODUCTION_ALIAS = "production"
PRODUCTION_STAGE = "Production"
WER_TAG = "val_wer"  # version tag holding the dev WER that `if-better` promotion compares


class TrackingError(UserError):
    """An MLflow store or registry problem, with what to do about it."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup_uri() -> str:
    """Points MLflow at the tracking store (for commands that read models but log no run)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def setup(experiment: str) -> str:
    """Points MLflow at the tracking store and returns the experiment id, creating the experiment if needed.

    With the default local store, artifacts go under ./mlruns next to mlflow.db.
    """
    uri = setup_uri()
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`: the run, and so its experiment, already exist
        return mlflow.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            exp_id = found.experiment_id
        else:
            location = Path("mlruns").resolve().as_uri() if uri.startswith("sqlite:") else None
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    except MlflowException as e:
        raise TrackingError(f"cannot use MLflow tracking store {uri}: {e.message.splitlines()[0]}") from None
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def pip_requirements() -> list[str]:
    """Exact versions of what inference imports, so a served model gets the stack it was trained with."""
    return [f"{name}=={installed_version(name).split('+')[0]}"
            for name in ("torch", "torchaudio", "mlflow", "numpy", "pandas", "soundfile")]


def log_model(checkpoint: Path, input_example_audio: Path) -> str:
    """Logs the checkpoint as a pyfunc model (audio in, text out) in the active run; returns its model URI."""
    import pandas as pd

    from asr.pyfunc import audio_to_base64, signature

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc.py")),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(Path(__file__).parent)],
        signature=signature(),
        input_example=pd.DataFrame({"audio": [audio_to_base64(input_example_audio)]}),
        pip_requirements=pip_requirements(),
    )
    return info.model_uri


def register(model_uri: str, name: str, run_id: str, dev_wer: float) -> str:
    """Registers a new version of `name` and returns its version number."""
    mv = mlflow.register_model(model_uri, name, tags={WER_TAG: f"{dev_wer:.6f}", "run_id": run_id})
    return str(mv.version)


def current_production(client: MlflowClient, name: str):
    """The version carrying the production alias, else the one in stage Production, else None."""
    try:
        return client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
    except MlflowException:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            versions = client.get_latest_versions(name, stages=[PRODUCTION_STAGE])
        except MlflowException:
            return None
    return versions[0] if versions else None


def should_promote(policy: str, dev_wer: float, current) -> bool:
    if policy == "always":
        return True
    if policy == "never":
        return False
    if current is None:
        return True
    current_wer = current.tags.get(WER_TAG)
    return current_wer is None or dev_wer < float(current_wer)


def promote(name: str, version: str) -> None:
    """Alias `production` -> version, and stage Production (previous Production versions archived)."""
    client = MlflowClient()
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, version, PRODUCTION_STAGE, archive_existing_versions=True)


@dataclass
class Promotion:
    version: str
    promoted: bool
    policy: str
    dev_wer: float
    previous: str | None = None           # the Production version before this one
    previous_wer: float | None = None

    def describe(self) -> str:
        verdict = "promoted to Production (alias production)" if self.promoted else "not promoted"
        why = f"policy {self.policy}"
        if self.previous is not None and self.previous_wer is not None:
            why += f"; dev WER {self.dev_wer:.3f} vs version {self.previous}'s {self.previous_wer:.3f}"
        elif self.previous is None:
            why += "; no Production version yet"
        return f"version {self.version} {verdict} ({why})"


def register_and_promote(model_uri: str, name: str, run_id: str, dev_wer: float, policy: str) -> Promotion:
    current = current_production(MlflowClient(), name)
    version = register(model_uri, name, run_id, dev_wer)
    promoted = should_promote(policy, dev_wer, current)
    if promoted:
        promote(name, version)
    previous_wer = float(current.tags[WER_TAG]) if current is not None and WER_TAG in current.tags else None
    return Promotion(version, promoted, policy, dev_wer, str(current.version) if current else None, previous_wer)


def model_uri(name: str, stage: str = PRODUCTION_STAGE, alias: str = "", version: str = "") -> str:
    """models:/ URI for a registered model: an explicit version wins over an alias, an alias over a stage."""
    if version:
        return f"models:/{name}/{version}"
    if alias:
        return f"models:/{name}@{alias}"
    return f"models:/{name}/{stage}"


def load_model(uri: str):
    """Loads a pyfunc model, turning registry misses into a one-line error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return mlflow.pyfunc.load_model(uri)
    except MlflowException as e:
        raise TrackingError(f"cannot load {uri} from {tracking_uri()}: {e.message.splitlines()[0]} "
                            "(train and register one with `asr train`)") from None


def load_transcriber(uri: str, decode=None):
    """An `asr.transcribe.Transcriber` from wherever a model lives: a checkpoint file, a training output folder
    (OUTPUT_DIR/RUN_ID), a local MLflow model folder, a run id, runs:/ or models:/ URIs."""
    import re

    from asr.transcribe import Transcriber

    path = Path(uri)
    if path.is_file():
        return Transcriber.from_checkpoint(path, decode)
    if path.is_dir() and not (path / "MLmodel").is_file():
        for name in ("model.pt", "best.pt", "last.pt"):
            if (path / name).is_file():
                return Transcriber.from_checkpoint(path / name, decode)
        raise TrackingError(f"{uri}: no model.pt, best.pt or last.pt in this folder")
    if re.fullmatch(r"[0-9a-f]{32}", uri):
        uri = f"runs:/{uri}/model"
    if not (path.is_dir() or uri.startswith(("models:/", "runs:/", "mlflow-artifacts:", "file:"))):
        raise TrackingError(f"{uri}: not a checkpoint, a model folder, a run id, or a runs:/ or models:/ URI")
    transcriber = load_model(uri).unwrap_python_model().transcriber
    if decode is not None:
        transcriber.configure(decode)
    return transcriber
