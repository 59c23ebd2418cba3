"""The front door: a recognizer from wherever a trained model lives (`asr.load`).

A reference is a checkpoint file, a training output folder (OUTPUT_DIR/RUN_ID), a local MLflow model folder, a
run id, or a runs:/, models:/, mlflow-artifacts: or file: URI. Registry references are read from MLflow's current
tracking URI (MLFLOW_TRACKING_URI, or what `mlflow.set_tracking_uri` set).
"""

from __future__ import annotations

import re
import sys
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from asr import UserError, not_found, redact
from asr.checkpoint import MODEL, load_recognizer
from asr.config import DecodeConfig, RecognizerConfig
from asr.decoding import DECODER_FILE, read_model_decoder, with_overrides
from asr.model import SpeechModel
from asr.text import TextNormalizer
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
        raise _not_found(uri, e) from None
    finally:
        # MLflow puts the model's code/ folder first on sys.path and leaves it there. This process already runs its
        # own asr; processes it spawns later inherit sys.path and would import the model's copy instead (an older
        # layout, or the model side alone) and fail.
        sys.path[:] = path


def _not_found(uri: str, e: MlflowException) -> ModelNotFound:
    """One line: what of `uri` the tracking store lacks (the model, the version, the alias, the run, the run's
    model) and what it has instead, or MLflow's own first line when the store cannot say (unreachable)."""
    try:
        why = _missing(uri)
    except MlflowException:
        why = None
    return ModelNotFound(f"cannot load {uri} from {redact(mlflow.get_tracking_uri())}: "
                         f"{why or e.message.splitlines()[0]}")


def _missing(uri: str) -> str | None:
    """What the tracking store lacks of a models:/ or runs:/ `uri`, with what it has; None when it has it all
    (the failure was elsewhere). Raises MlflowException when the store cannot be read."""
    client = mlflow.MlflowClient()
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        try:
            client.get_run(run_id)
        except MlflowException as e:
            if not not_found(e):
                raise
            return f"there is no run {run_id} in this tracking store"
        return f"run {run_id} has no model at '{path}' (a run logs its model when training finishes)"
    if not uri.startswith("models:/"):
        return None
    ref = uri[len("models:/"):]
    name, alias = ref.split("@", 1) if "@" in ref else (ref, None)
    name, _, suffix = name.partition("/")
    if re.fullmatch(r"m-[0-9a-f]+", name) and not suffix and alias is None:
        return None  # a logged model by its id: MLflow's own line says it is not found
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if not not_found(e):
            raise
        return f"there is no registered model {name} here (train and register one with `asr train`)"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = sorted(model.aliases)
    if alias is not None:
        listed = ", ".join(aliases) or "none"
        return None if alias in aliases else f"{name} has no alias {alias} (its aliases: {listed})"
    if not suffix:
        return (f"models:/{name} names no version: add one, e.g. models:/{name}/{versions[-1] if versions else 1} "
                f"or models:/{name}@{aliases[0] if aliases else 'ALIAS'} ({name} has {_versions(versions)})")
    if suffix.isdigit():
        return None if int(suffix) in versions else f"{name} has no version {suffix} (it has {_versions(versions)})"
    return f"{name} has no version in stage {suffix} (it has {_versions(versions)})"


def _versions(numbers: list[int]) -> str:
    """'versions 1-3', 'versions 1, 2, 5', 'version 1' or 'no versions'."""
    if not numbers:
        return "no versions"
    if len(numbers) == 1:
        return f"version {numbers[0]}"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"versions {numbers[0]}-{numbers[-1]}"
    return "versions " + ", ".join(map(str, numbers))


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


def load_acoustic_model(ref: str) -> tuple[RecognizerConfig, SpeechModel, DecodeConfig, TextNormalizer]:
    """The recognizer settings, acoustic model (eval mode), own decoder settings (greedy for a model without a
    decoder) and text normalization (vocabulary) of the model `ref` names, with no decoder built: its LM is named
    in the settings, never opened (what
    an export needs; an 800 MB ARPA LM takes minutes to load). From the tracking store, only the checkpoint and
    decoder.json are fetched. Raises as load_transcriber does."""
    path = _checkpoint(ref)
    if path is not None:
        cfg, model, text = load_recognizer(path)
        return cfg, model, _own_decoder(path) or DecodeConfig(), text
    uri = _mlflow_uri(ref)
    with tempfile.TemporaryDirectory(prefix="asr-model-") as tmp:
        checkpoint, decoder = _pyfunc_files(uri, Path(tmp))
        cfg, model, text = load_recognizer(checkpoint)
        return cfg, model, read_model_decoder(decoder) if decoder else DecodeConfig(), text


def fetch_checkpoint(ref: str, dest: Path) -> tuple[Path, str]:
    """The checkpoint file of the model `ref` names (see the module docstring for the forms; from the tracking
    store, downloaded into `dest`), and the name a fine-tuned model's lineage gives it: NAME/VERSION for a
    registered model (a stage or alias pinned to the version it points to now, which is the one fetched), the
    runs:/ URI for a run's model, the absolute path for a local file or folder. Raises as load_transcriber does."""
    path = _checkpoint(ref)
    if path is not None:
        return path, str(path.resolve())
    uri = _mlflow_uri(ref)
    if Path(ref).is_dir():
        return _pyfunc_files(uri, dest)[0], str(Path(ref).resolve())
    uri, name = _pinned(uri)
    return _pyfunc_files(uri, dest)[0], name


@dataclass(frozen=True)
class ModelSource:
    """The model a reference names, pinned: what a run scoring it records, so that its scores still say which
    version they are of once a stage or alias has moved on."""
    uri: str                    # what to load: a registry stage or alias as models:/NAME/VERSION, else the reference
    registered_model: str = ""  # '' = not loaded from the registry (a run's model, a local file or folder)
    version: str = ""
    run_id: str = ""            # the run that logged the model; '' = none known (a local file or folder)


def model_source(ref: str) -> ModelSource:
    """The model `ref` names (see the module docstring for the forms) with its registered name, version and run
    id where the tracking store knows them; a stage or alias is resolved to the version it points to now, which
    is the one to load (ModelSource.uri). Raises ModelNotFound when the registry has no such model, stage,
    alias or version."""
    uri = tracking_reference(ref)
    if uri is None:
        return ModelSource(ref)
    if uri.startswith("runs:/"):
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        return ModelSource(ref, run_id=RunsArtifactRepository.parse_runs_uri(uri)[0])
    found = _registered(uri)
    if found is None:
        return ModelSource(ref)
    name, version = found
    try:
        run_id = mlflow.MlflowClient().get_model_version(name, version).run_id or ""
    except MlflowException as e:
        raise _not_found(uri, e) from None
    return ModelSource(f"models:/{name}/{version}", name, version, run_id)


def _pinned(uri: str) -> tuple[str, str]:
    """A models:/NAME/STAGE or models:/NAME@ALIAS URI as models:/NAME/VERSION, with its name NAME/VERSION; other
    URIs as they are, named by themselves. Raises ModelNotFound when the registry has no such model, stage or
    alias."""
    found = _registered(uri)
    if found is None:
        return uri, uri
    name, version = found
    return f"models:/{name}/{version}", f"{name}/{version}"


def _registered(uri: str) -> tuple[str, str] | None:
    """The registered model name and version a models:/ URI names now (a stage or alias resolved), or None for
    another URI or a logged model by its id (models:/m-<id>). Raises ModelNotFound when the registry has no such
    model, stage, alias or version."""
    if not uri.startswith("models:/"):
        return None
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    try:
        found = get_model_name_and_version(mlflow.MlflowClient(), uri)
    except MlflowException as e:
        raise _not_found(uri, e) from None
    if len(found) == 1:  # models:/m-<id>, a logged model by its id
        return None
    name, version = found
    return name, str(version)


def _pyfunc_files(uri: str, dest: Path) -> tuple[Path, Path | None]:
    """The checkpoint and decoder.json (None for a model without one) of the pyfunc model at `uri`, downloaded
    into `dest` (the model's other artifacts are not)."""
    from mlflow.models import Model
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        repo = get_artifact_repository(uri)
        flavor = Model.load(repo.download_artifacts("MLmodel", str(dest))).flavors.get("python_function", {})
        files = {name: entry["path"] for name, entry in flavor.get("artifacts", {}).items()}
        if "checkpoint" not in files:
            raise ModelNotFound(f"{uri} is not a speech recognition model of this package (it has no checkpoint)")
        checkpoint = Path(repo.download_artifacts(files["checkpoint"], str(dest)))
        decoder = Path(repo.download_artifacts(files["decoder"], str(dest))) if "decoder" in files else None
    except MlflowException as e:
        raise _not_found(uri, e) from None
    return checkpoint, decoder


def from_checkpoint(path: Path) -> Transcriber:
    """A checkpoint's Transcriber, decoding with the decoder of its training run's folder when it is that run's
    final model (model.pt with decoder.json beside it), else greedily."""
    return Transcriber.from_checkpoint(path, _own_decoder(path))


def _own_decoder(path: Path) -> DecodeConfig | None:
    """The decoder settings of checkpoint `path`'s training run, when it is that run's final model (model.pt with
    decoder.json beside it), else None (greedy)."""
    own = path.with_name(DECODER_FILE)
    return read_model_decoder(own) if path.name == MODEL and own.is_file() else None


def _checkpoint(ref: str) -> Path | None:
    """The checkpoint `ref` names when it is a file or a training output folder, else None (a model in MLflow).
    Raises ModelNotFound for a folder that holds neither a checkpoint nor an MLflow model."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir() and not (path / "MLmodel").is_file():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise ModelNotFound(f"{ref}: no {', '.join(CHECKPOINT_NAMES[:-1])} or {CHECKPOINT_NAMES[-1]} in this folder")
    return None


def _mlflow_uri(ref: str) -> str:
    """The URI the MLflow model `ref` is loaded from (a run id means runs:/RUN_ID/model). Raises ModelNotFound for
    what is neither a model folder nor an MLflow URI."""
    uri = tracking_reference(ref) or ref
    if not (Path(ref).is_dir() or uri.startswith(MLFLOW_SCHEMES)):
        raise ModelNotFound(f"{ref}: not a checkpoint, a model folder, a run id, or a runs:/ or models:/ URI")
    return uri


def _load(ref: str) -> Transcriber:
    path = _checkpoint(ref)
    if path is not None:
        return from_checkpoint(path)
    return load_pyfunc(_mlflow_uri(ref)).unwrap_python_model().transcriber
