"""The whole life cycle on real LibriSpeech audio and a real MLflow SQLite store: train, track, register,
promote, load the registered model, validate by file id, fail cleanly, and drive it all through `mlflow run`.

Models are tiny (seconds per training on 2 CPU cores): these tests check the plumbing, not accuracy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import (
    BIN,
    FILE_ID,
    MODEL_NAME,
    REPO,
    TINY,
    TRANSCRIPT,
    asr_command,
    copy_project,
    mlflow_store,
    new_store,
    one_line_error,
    run_cli,
    run_cli_alongside,
    run_cli_here,
    split_dir,
    sqlite_uri,
)
from mlflow import MlflowClient

from asr import UserError
from asr.audio import load_audio
from asr.config import to_dict, to_params
from asr.data.dataset import read_splits, split_digest
from asr.model import SpeechModel
from asr.pyfunc import audio_to_base64
from asr.text import BLANK, VOCAB, normalized
from asr.tracking import registry as model_registry
from asr.tracking import store
from asr.training.train import train
from asr.transcribe import Transcriber

pytestmark = pytest.mark.slow  # training, registry, mlflow run

EXPERIMENT = "SpeechRecognition"
TARGET_LINE = f"target:    {TRANSCRIPT.lower()}"
VOCAB_CHARS = set(VOCAB) - {VOCAB[BLANK]}


def flac(file_id: str = FILE_ID) -> Path:
    speaker, chapter, _ = file_id.split("-")
    return split_dir("test-clean") / speaker / chapter / f"{file_id}.flac"


def local_path(uri: str) -> Path:
    """The folder of a local artifact URI (MLflow gives some as file:// URIs, some as plain paths)."""
    return Path(urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def registry(client: MlflowClient) -> tuple[dict[str, str], dict[str, int]]:
    """version -> stage, and alias -> version, of the registered model."""
    stages = {mv.version: mv.current_stage for mv in client.search_model_versions(f"name='{MODEL_NAME}'")}
    aliases = {k: int(v) for k, v in client.get_registered_model(MODEL_NAME).aliases.items()}
    return {str(k): v for k, v in stages.items()}, aliases


# ---------------------------------------------------------------- (a) training is tracked

def test_training_run_is_tracked_in_mlflow(trained_store):
    cfg, result = trained_store.cfg, trained_store.result
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-e2e"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    # everything lands in the test's own folder, nothing in the repository
    assert local_path(run.info.artifact_uri).is_relative_to(trained_store.root)

    # params: the config, field by field, plus the model size and the training set size
    params = run.data.params
    for key, value in to_params(cfg).items():
        assert params[key] == str(value), key
    assert "lookahead" not in params  # a bidirectional model has no look-ahead (--streaming only)
    n_params = sum(p.numel() for p in SpeechModel.from_config(cfg, len(VOCAB)).parameters())
    assert params["parameters"] == str(n_params)
    assert params["train_utterances"] == str(cfg.data.max_utterances)

    # metrics: loss and learning rate every step, validation every epoch
    steps = cfg.optim.epoch * math.ceil(cfg.data.max_utterances / cfg.optim.batch)
    assert steps == 4
    loss, lr = history(client, run.info.run_id, "loss"), history(client, run.info.run_id, "learning_rate")
    assert [s for s, _ in loss] == list(range(1, steps + 1))
    assert all(math.isfinite(v) and v > 0 for _, v in loss)
    assert [s for s, _ in lr] == list(range(1, steps + 1))
    assert all(0 < v <= cfg.optim.learning_rate * (1 + 1e-6) for _, v in lr)
    assert len({v for _, v in lr}) == steps  # a schedule, not a constant
    for key in ("val_loss", "wer", "cer"):
        values = history(client, run.info.run_id, key)
        assert [s for s, _ in values] == list(range(1, cfg.optim.epoch + 1)), key
        assert all(math.isfinite(v) and v >= 0 for _, v in values), key
    wers = [v for _, v in history(client, run.info.run_id, "wer")]
    assert run.data.metrics["best_wer"] == pytest.approx(min(wers))
    assert result.dev["wer"] == pytest.approx(min(wers))
    assert {"best_cer", "test_loss", "test_wer", "test_cer", "dev_wer", "dev_cer"} <= set(run.data.metrics)
    # scored as the model is served: the model's own decoder (greedy: trained without an LM) and greedy decoding
    assert run.data.metrics["test_wer"] == pytest.approx(result.decoding.test["wer"])
    assert run.data.metrics["test_wer"] == run.data.metrics["test_wer_greedy"]
    assert run.data.metrics["dev_cer"] == run.data.metrics["dev_cer_greedy"]

    # artifacts
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "vocab.json", "predictions_dev.json", "predictions_test.json"} <= listed
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.json",
                                                     dst_path=str(trained_store.root / "dl")))
    assert json.loads(local.read_text()) == json.loads(json.dumps(to_dict(cfg)))
    assert mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/vocab.json") == {"vocab": list(VOCAB), "blank": BLANK}

    # the predictions table: every dev utterance, normalized target, decoded prediction
    table = client.load_table(run.info.experiment_id, "predictions_dev.json", run_ids=[run.info.run_id])
    dev = read_splits(cfg.data.dev_data)
    assert len(table) == len(dev) == 13
    assert {"file_id", "target", "prediction"} <= set(table.columns)
    targets = dict(zip(table["file_id"], table["target"], strict=True))
    assert targets == {u.file_id: normalized(u.transcript) for u in dev}
    assert all(set(p) <= VOCAB_CHARS for p in table["prediction"])
    test_table = client.load_table(run.info.experiment_id, "predictions_test.json", run_ids=[run.info.run_id])
    assert sorted(test_table["file_id"]) == sorted(u.file_id for u in read_splits(cfg.data.test_data))

    # the logged model: a pyfunc model of this run, holding the checkpoint
    outputs = run.outputs.model_outputs
    assert len(outputs) == 1
    logged = mlflow.get_logged_model(outputs[0].model_id)
    assert logged.source_run_id == run.info.run_id
    files = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=logged.artifact_location)}
    assert {"MLmodel", "artifacts", "requirements.txt"} <= files
    ckpt = mlflow.artifacts.list_artifacts(artifact_uri=f"{logged.artifact_location}/artifacts")
    assert [Path(a.path).name for a in ckpt] == ["model.pt"]
    assert (Path(cfg.checkpoint.output_dir) / run.info.run_id / "model.pt").is_file()

    # and its registration
    assert run.data.tags["registered_model"] == MODEL_NAME
    assert run.data.tags["model_version"] == "1"
    assert run.data.tags["promoted"] == "True"
    mv = client.get_model_version(MODEL_NAME, "1")
    assert mv.run_id == run.info.run_id
    assert mv.source == f"models:/{logged.model_id}"


def test_first_version_is_registered_and_promoted(trained):
    # the registry as it was right after the first training (later tests add versions)
    assert trained.versions.keys() == {"1"}
    stage, aliases, tags = trained.versions["1"]
    assert stage == "Production"
    assert aliases == ["production"]
    assert {k: str(v) for k, v in trained.registered_aliases.items()} == {"production": "1"}
    assert float(tags[model_registry.WER_TAG]) == pytest.approx(trained.result.decoding.dev["wer"], abs=1e-6)
    assert tags[model_registry.DECODER_TAG] == "greedy"
    test = trained.result.decoding.test
    assert (float(tags["test_wer"]), float(tags["test_cer"])) == pytest.approx((test["wer"], test["cer"]), abs=1e-4)
    assert tags["run_id"] == trained.result.run_id
    p = trained.result.promotion
    assert (p.version, p.promoted, p.policy, p.previous) == ("1", True, "if-better", None)
    assert "version 1 promoted to Production (alias production)" in trained.stdout


def test_promotion_policies(trained_store, tiny_config):
    """always moves Production and the alias and archives the old version; never leaves them; if-better
    promotes only a lower dev WER than the Production version's."""
    client = MlflowClient()
    stages, aliases = registry(client)
    assert stages == {"1": "Production"} and aliases == {"production": 1}, "expects the fresh session store"

    def tiny_train(policy: str):
        return train(tiny_config(promote=policy, output_dir=str(trained_store.root / "outputs")), progress=False)

    r2 = tiny_train("always")
    assert (r2.promotion.version, r2.promotion.promoted, str(r2.promotion.previous)) == ("2", True, "1")
    assert registry(client) == ({"1": "Archived", "2": "Production"}, {"production": 2})
    assert client.get_model_version_by_alias(MODEL_NAME, "production").run_id == r2.run_id

    r3 = tiny_train("never")
    assert (r3.promotion.version, r3.promotion.promoted) == ("3", False)
    assert registry(client) == ({"1": "Archived", "2": "Production", "3": "None"}, {"production": 2})
    assert client.get_run(r3.run_id).data.tags["promoted"] == "False"

    # if-better against a Production version that scored a perfect dev WER: no tiny model beats it
    client.set_model_version_tag(MODEL_NAME, "2", model_registry.WER_TAG, "0.0")
    r4 = tiny_train("if-better")
    assert (r4.promotion.version, r4.promotion.promoted, str(r4.promotion.previous)) == ("4", False, "2")
    assert r4.promotion.previous_wer == 0.0 and r4.promotion.dev_wer >= 0.0
    assert registry(client) == ({"1": "Archived", "2": "Production", "3": "None", "4": "None"},
                                {"production": 2})
    assert "not promoted" in r4.promotion.describe()

    # ... and against one that scored worse than any model can: promoted
    client.set_model_version_tag(MODEL_NAME, "2", model_registry.WER_TAG, "1000.0")
    r5 = tiny_train("if-better")
    assert (r5.promotion.version, r5.promotion.promoted, str(r5.promotion.previous)) == ("5", True, "2")
    stages, aliases = registry(client)
    assert stages == {"1": "Archived", "2": "Archived", "3": "None", "4": "None", "5": "Production"}
    assert aliases == {"production": 5}


# ---------------------------------------------------------------- the run page tells the story

def git_out(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_run_lists_its_three_splits_as_datasets(trained_store):
    """"Datasets" on the run page: the utterances trained on, the dev split and the held-out test split, each
    with its folder as the source, the split_digest of its file ids and transcripts, and MLflow's context tag."""
    cfg = trained_store.cfg
    run = MlflowClient().get_run(trained_store.result.run_id)
    logged = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in run.inputs.dataset_inputs}
    assert len(run.inputs.dataset_inputs) == 3 and set(logged) == {"training", "validation", "test"}
    splits = {"training": cfg.data.train_data, "validation": cfg.data.dev_data, "test": cfg.data.test_data}
    for context, dirs in splits.items():
        (folder,) = dirs
        utterances = read_splits(dirs)
        dataset = logged[context]
        assert dataset.digest == split_digest(utterances), context
        assert dataset.source_type == "local"
        assert json.loads(dataset.source) == {"uri": str(Path(folder).absolute())}
        assert dataset.name == f"{Path(folder).parent.name}/{Path(folder).name}"
        assert json.loads(dataset.profile)["utterances"] == len(utterances)
        assert 0 < json.loads(dataset.profile)["hours"] < 1
        columns = [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]]
        assert columns == ["file_id", "transcript", "seconds"]
    assert run.data.params["train_utterances"] == str(len(read_splits(cfg.data.train_data)))
    assert len({d.digest for d in logged.values()}) == 3


def test_run_tags_name_the_git_commit_and_library_versions(trained_store):
    """Trained in this process (pytest is the entry script, outside any checkout, as the `asr` console script is),
    MLflow sets no git tags itself: the run still names the commit, branch and dirty state of the checkout the
    package runs from, and the versions of torch, torchaudio and mlflow."""
    import torch
    import torchaudio

    tags = MlflowClient().get_run(trained_store.result.run_id).data.tags
    assert tags["mlflow.source.git.commit"] == git_out("rev-parse", "HEAD")
    dirty = bool(git_out("status", "--porcelain", "--untracked-files=no"))
    assert tags["mlflow.source.git.dirty"] == str(dirty).lower()
    branch = subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    assert tags.get("mlflow.source.git.branch", "") == branch
    assert (tags["torch_version"], tags["torchaudio_version"], tags["mlflow_version"]) == \
        (torch.__version__, torchaudio.__version__, mlflow.__version__)


def test_training_logs_system_metrics(trained_store):
    """MLflow's own system metrics (run page: "System metrics"), sampled during training."""
    metrics = MlflowClient().get_run(trained_store.result.run_id).data.metrics
    system = {k for k in metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_run_description_says_what_was_trained_on_what_and_how_well(trained_store):
    cfg, result = trained_store.cfg, trained_store.result
    note = MlflowClient().get_run(result.run_id).data.tags["mlflow.note.content"]
    what, how = [line for line in note.splitlines() if line.strip()]
    train_name = Path(cfg.data.train_data[0]).name
    assert f"trained {cfg.optim.epoch} epochs (best: " in what
    assert f"on {train_name} ({cfg.data.max_utterances} utterances" in what and "M-parameter CTC model" in what
    assert f"Held-out test test-clean ({len(read_splits(cfg.data.test_data))} utterances" in how
    assert f"WER {result.test['wer']:.3f}, CER {result.test['cer']:.3f}" in how
    assert f"dev dev-clean ({len(read_splits(cfg.data.dev_data))} utterances" in how


# ---------------------------------------------------------------- (b) the registered pyfunc model

def test_registered_pyfunc_model_transcribes_paths_and_base64(trained_store, monkeypatch):
    monkeypatch.setenv("ASR_SERVE_ALLOWED_ROOTS", str(split_dir("test-clean")))  # paths are read only there
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@production")
    assert model.metadata.get_input_schema() is None  # predict reads every request shape (asr.pyfunc.request_rows)
    assert model.metadata.get_output_schema().input_names() == ["text"]

    path = flac()
    by_path = model.predict(pd.DataFrame({"audio": [str(path)]}))
    assert list(by_path.columns) == ["text"] and len(by_path) == 1
    text = by_path["text"][0]
    assert isinstance(text, str) and set(text) <= VOCAB_CHARS
    assert text == text.strip() and "  " not in text

    by_bytes = model.predict(pd.DataFrame({"audio": [audio_to_base64(path)]}))
    assert by_bytes["text"].tolist() == [text]

    # the same transcript as the checkpoint gives outside MLflow
    version = MlflowClient().get_model_version_by_alias(MODEL_NAME, "production")
    output_dir = MlflowClient().get_run(version.run_id).data.params["output_dir"]
    transcriber = Transcriber.from_checkpoint(Path(output_dir) / version.run_id / "model.pt")
    assert transcriber.transcribe([load_audio(path)]) == [text]

    # several rows, mixed kinds, one transcript each, in order
    other = flac("1089-134686-0001")
    both = model.predict(pd.DataFrame({"audio": [audio_to_base64(other), str(path)]}))
    assert len(both) == 2 and all(isinstance(t, str) for t in both["text"])

    with pytest.raises(UserError, match="base64"):
        model.predict(pd.DataFrame({"audio": ["no such file and not base64 !"]}))


# ---------------------------------------------------------------- (c) validate by file id

def test_validate_by_file_id_with_main_py(trained_store):
    proc = run_cli([sys.executable, str(REPO / "main.py"), "--train=False", f"--file_id={FILE_ID}",
                    "--dataset", str(split_dir("test-clean"))], cwd=trained_store.root, tracking_uri=trained_store.uri)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert TARGET_LINE in lines
    production = registry(MlflowClient())[1]["production"]  # tests above may have promoted another version
    assert f"model:     models:/{MODEL_NAME}/Production (version {production})" in lines
    predicted = [line for line in lines if line.startswith("predicted:")]
    assert len(predicted) == 1 and set(predicted[0][len("predicted: "):].strip()) <= VOCAB_CHARS
    assert any(line.startswith("WER ") and "CER " in line for line in lines)
    assert any(line.startswith(f"file id:   {FILE_ID}") for line in lines)

    # the validation is itself a run, with its target and prediction
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.task = 'validate'")
    assert runs, "validation was not logged"
    run = runs[0]
    assert run.data.params["file_id"] == FILE_ID
    assert run.data.params["model_uri"] == f"models:/{MODEL_NAME}/Production"
    assert (run.data.tags["registered_model"], run.data.tags["model_version"]) == (MODEL_NAME, str(production))
    assert run.data.tags["model_run_id"] == client.get_model_version(MODEL_NAME, str(production)).run_id
    assert {"utterance_wer", "utterance_cer"} <= set(run.data.metrics)
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/validation.json")
    assert logged["target"] == TRANSCRIPT.lower()
    assert f"predicted: {logged['prediction']}" in lines


# ---------------------------------------------------------------- (d) user errors: one line, exit 1

def test_user_errors_are_one_line_with_exit_code_1(trained, tmp_path, empty_store_db):
    test_clean = str(split_dir("test-clean"))
    empty = tmp_path / "empty-store"
    new_store(empty_store_db, empty)
    with mlflow_store(empty):
        store.setup(EXPERIMENT)  # an initialized store with no registered model at all

    main_py = [sys.executable, str(REPO / "main.py"), "--train=False"]
    asr_validate = asr_command() + ["validate"]
    cases = {
        # name: (command, store, expected in the message)
        "asr unknown id": (asr_validate + ["--file_id", "1089-134686-9999", "--dataset", test_clean], empty,
                           "1089-134686-9999 not found"),
        "asr malformed id": (asr_validate + ["--file_id", "../../etc/passwd", "--dataset", test_clean], empty,
                             "invalid file id"),
        "asr missing dataset": (asr_validate + ["--file_id", FILE_ID, "--dataset", str(tmp_path / "nope")],
                                empty, "dataset folder not found"),
        "asr missing model": (asr_validate + ["--file_id", FILE_ID, "--dataset", test_clean], empty,
                              f"models:/{MODEL_NAME}/Production"),
        "main unknown id": (main_py + ["--file_id=1089-134686-9999", "--dataset", test_clean], trained.root,
                            "1089-134686-9999 not found"),
        "main malformed id": (main_py + ["--file_id=../../etc/passwd", "--dataset", test_clean], trained.root,
                              "invalid file id"),
        "main missing dataset": (main_py + [f"--file_id={FILE_ID}", "--dataset", str(tmp_path / "nope")],
                                 trained.root, "dataset folder not found"),
        "main missing model": (main_py + [f"--file_id={FILE_ID}", "--dataset", test_clean,
                                          "--registered_model", "NoSuchModel"], trained.root, "NoSuchModel"),
    }
    # main.py and one `asr validate` as real processes, two at a time (2 CPU cores; each is mostly interpreter
    # start-up and imports); meanwhile the other `asr validate` cases in this process
    here = ("asr unknown id", "asr malformed id", "asr missing dataset")
    with ThreadPoolExecutor(max_workers=2) as pool:
        processes = {name: run_cli_alongside(pool, cmd, tmp_path, sqlite_uri(store))
                     for name, (cmd, store, _) in cases.items() if name not in here}
        done = {name: run_cli_here(cases[name][0][len(asr_validate) - 1:], tmp_path, sqlite_uri(cases[name][1]))
                for name in here}
        results = {name: done[name] if name in done else processes[name].result() for name in cases}
    failures = []
    for name, proc in results.items():
        if problem := one_line_error(proc):
            failures.append(f"{name}: {problem}")
        elif cases[name][2] not in proc.stderr:
            failures.append(f"{name}: message lacks {cases[name][2]!r}: {proc.stderr!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- (e) the real `mlflow run`

def test_mlflow_run_train_then_validate(tmp_path, short_dev, empty_store_db):
    """`mlflow run` of both entry points against a copy of the project. `mlflow run` creates the run itself
    (in --experiment-name's experiment), logs the entry point's parameters to it, and hands it to the
    command through MLFLOW_RUN_ID / MLFLOW_EXPERIMENT_ID / MLFLOW_TRACKING_URI; training must log into that
    run rather than start another."""
    test_clean = split_dir("test-clean")
    project = copy_project(tmp_path / "project")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "project"]):  # a checkout of the project
        git_out("-c", "user.name=t", "-c", "user.email=t@example.com", *args, cwd=project)
    uri = new_store(empty_store_db, tmp_path)
    mlflow_cli = [str(BIN / "mlflow"), "run", ".", "--env-manager", "local", "--experiment-name", EXPERIMENT]
    params = dict(TINY, train_data=short_dev, dev_data=short_dev, test_data="", output_dir=tmp_path / "outputs")
    train_cmd = mlflow_cli + ["-e", "train"] + [t for k, v in params.items() for t in ("-P", f"{k}={v}")]

    trained = run_cli(train_cmd, cwd=project, tracking_uri=uri)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "version 1 promoted to Production" in trained.stdout

    validated = run_cli(mlflow_cli + ["-e", "validate", "-P", f"file_id={FILE_ID}", "-P", f"dataset={test_clean}"],
                        cwd=project, tracking_uri=uri)
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert TARGET_LINE in validated.stdout.splitlines()

    with mlflow_store(tmp_path):
        client = MlflowClient()
        exp = client.get_experiment_by_name(EXPERIMENT)
        all_runs = client.search_runs([exp.experiment_id])
        runs = {r.data.tags.get("mlflow.project.entryPoint"): r for r in all_runs}
        assert len(all_runs) == 2 and set(runs) == {"train", "validate"}, \
            "one run per entry point: the one `mlflow run` created"
        train_run = runs["train"]
        assert train_run.info.status == "FINISHED"
        assert {"loss", "wer", "cer", "val_loss", "best_wer"} <= set(train_run.data.metrics)
        assert train_run.data.params["epoch"] == "1" and train_run.data.params["train_data"] == str(short_dev)
        # the run names the checkout it ran from, and the libraries
        tags = train_run.data.tags
        assert tags["mlflow.source.git.commit"] == git_out("rev-parse", "HEAD", cwd=project)
        assert (tags["mlflow.source.git.dirty"], tags["mlflow_version"]) == ("false", mlflow.__version__)
        assert {"torch_version", "torchaudio_version"} <= set(tags)
        assert {"utterance_wer", "utterance_cer"} <= set(runs["validate"].data.metrics)
        default = client.get_experiment_by_name("Default")
        assert default is None or not client.search_runs([default.experiment_id])

        mv = client.get_model_version_by_alias(MODEL_NAME, "production")
        assert (str(mv.version), mv.current_stage, mv.run_id) == ("1", "Production", train_run.info.run_id)
    # the runs' artifacts stay in the temporary folder (MLflow puts them under ./mlruns of the project copy)
    assert local_path(train_run.info.artifact_uri).is_relative_to(tmp_path)
    assert (tmp_path / "outputs" / train_run.info.run_id / "model.pt").is_file()
