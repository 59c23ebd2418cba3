"""What --model_uri says about a reference that names no loadable model: an export (TorchScript or ONNX, which
`asr export` writes and a new user may pass back), a file no torch.save wrote, a registry model, version or alias
that does not exist, a tracking store that is not there. One line each, saying what to give instead."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import new_store, one_line_error, run_cli_here
from stream_models import random_streaming_model, streaming_config

from asr.checkpoint import CheckpointError, export_kind, save_checkpoint
from asr.export import export_model
from asr.loading import ModelNotFound, load_transcriber

FROM = "give the checkpoint, run folder or models:/ URI it was exported from"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random model's checkpoint and its real TorchScript and ONNX exports."""
    root = tmp_path_factory.mktemp("exports")
    cfg = streaming_config(cnn_layers=1, rnn_layers=1, rnn_dim=8)
    model = random_streaming_model(cfg)
    return {"checkpoint": save_checkpoint(root / "model.pt", cfg, model),
            "TorchScript": export_model(model, "torchscript", root / "ts" / "model.pt", config=cfg),
            "ONNX": export_model(model, "onnx", root / "acoustic_model.onnx", config=cfg)}


@pytest.mark.parametrize("kind", ["TorchScript", "ONNX"])
def test_an_export_is_named_as_one_without_torch_warnings(exports, kind):
    assert export_kind(exports[kind]) == kind and export_kind(exports["checkpoint"]) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.load's TorchScript UserWarning would be one
        with pytest.raises(CheckpointError) as e:
            load_transcriber(str(exports[kind]))
    article = "an" if kind == "ONNX" else "a"
    said = f"{exports[kind]} is {article} {kind} export (what asr export writes), not a checkpoint: {FROM}"
    assert str(e.value) == said


def test_an_export_in_a_run_folder_is_named_too(exports):
    # `asr export --out OUTPUT_DIR/RUN_ID/model.pt` puts a TorchScript file where the folder form looks
    with pytest.raises(CheckpointError, match=f"is a TorchScript export .*{FROM}$"):
        load_transcriber(str(exports["TorchScript"].parent))


@pytest.mark.parametrize("content", [b"hello world\n", b"\x08\x01garbage that is no protobuf", b""])
def test_a_file_no_torch_save_wrote_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"^\S+notes.pt is not a checkpoint \(not a file torch.save wrote"):
        load_transcriber(str(path))


def test_a_folder_read_as_a_checkpoint_is_named_a_folder_not_missing(tmp_path):
    from asr.checkpoint import read_checkpoint

    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file$"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"^checkpoint not found: "):
        read_checkpoint(tmp_path / "none.pt")


def test_transcribe_says_so_in_one_line(exports, tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")  # never read: the model is loaded first
    proc = run_cli_here(["transcribe", "--model-uri", str(exports["ONNX"]), str(audio)], cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert proc.stderr.startswith(f"Error: {exports['ONNX']} is an ONNX export (what asr export writes)"), proc.stderr


@pytest.fixture
def registry(isolated_mlflow: str) -> str:
    """A store where Name has versions 1, 2 and 4 (3 deleted) and the alias production on 2, and a run that
    logged no model; returns that run's id. The versions point at nothing: nothing here gets that far."""
    import mlflow

    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        pass
    client.create_registered_model("Name")
    for _ in range(4):
        client.create_model_version("Name", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.delete_model_version("Name", "3")
    client.set_registered_model_alias("Name", "production", "2")
    return run.info.run_id


def test_registry_errors_say_what_is_missing_and_what_is_there(registry):
    import mlflow

    store = mlflow.get_tracking_uri()
    cases = {"models:/Nope/1": "there is no registered model Nope here (train and register one with `asr train`)",
             "models:/Name/9": "Name has no version 9 (it has versions 1, 2, 4)",
             "models:/Name@prodution": "Name has no alias prodution (its aliases: production)",
             "models:/Name": "models:/Name names no version: add one, e.g. models:/Name/4 or models:/Name@production "
                             "(Name has versions 1, 2, 4)",
             "models:/Name/Staging": "Name has no version in stage Staging (it has versions 1, 2, 4)",
             f"runs:/{registry}/model": f"run {registry} has no model at 'model' (a run logs its model when training "
                                        "finishes)",
             "0123456789abcdef0123456789abcdef": "there is no run 0123456789abcdef0123456789abcdef in this tracking "
                                                 "store"}
    for ref, why in cases.items():
        with pytest.raises(ModelNotFound) as e:
            load_transcriber(ref)
        uri = ref if ":" in ref else f"runs:/{ref}/model"
        assert str(e.value) == f"cannot load {uri} from {store}: {why}"


def test_read_only_commands_in_a_folder_without_a_store_say_so_and_create_none(tmp_path, short_dev):
    audio = next(short_dev.rglob("*.flac"))
    commands = {"transcribe": ["transcribe", "--model-uri", "models:/Name/1", str(audio)],
                "validate": ["validate", "--registered_model", "Name", "--model_version", "1", "--file_id", audio.stem,
                             "--dataset", str(short_dev)],
                "evaluate": ["evaluate", "--model_uri", "models:/Name@production", "--dataset", str(short_dev)],
                "promote": ["promote", "--registered_model", "Name", "--model_version", "1"]}
    for command, args in commands.items():  # MLFLOW_TRACKING_URI unset: the default store, ./mlflow.db
        proc = run_cli_here(args, cwd=tmp_path)
        assert one_line_error(proc) is None, (command, proc.stderr)
        assert (f"there is no tracking store here (MLFLOW_TRACKING_URI is unset and there is no mlflow.db in "
                f"{tmp_path}); run where you trained, or set MLFLOW_TRACKING_URI") in proc.stderr, proc.stderr
        assert "Creating initial MLflow database" not in proc.stdout + proc.stderr
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists(), command


def test_with_a_store_here_the_registry_is_asked(tmp_path, empty_store_db, short_dev):
    new_store(empty_store_db, tmp_path)  # ./mlflow.db, found through the default tracking URI
    proc = run_cli_here(["evaluate", "--model_uri", "models:/Name@production", "--dataset", str(short_dev)],
                        cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert "there is no registered model Name here (train and register one with `asr train`)" in proc.stderr
