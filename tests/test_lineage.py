"""What a run came from, on its MLflow run page: split digests, the git tags of the checkout the code runs from
(real git repositories), and MLflow's system metrics, on for a run shorter than one sampling interval and off by
the setting."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO
from mlflow import MlflowClient

from asr.data.dataset import Utterance, split_digest
from asr.tracking.lineage import git_tags, run_description, source_tags, split_summary, without_credentials
from asr.training.train import train

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]


def utterance(file_id: str, transcript: str) -> Utterance:
    speaker, chapter, _ = file_id.split("-")
    return Utterance(file_id, Path(f"/corpus/{speaker}/{chapter}/{file_id}.flac"), transcript, speaker, chapter)


def test_run_description_names_a_split_folder_once_and_counts_in_the_singular():
    """data/demo/test is `test (57 utterances, ...)`, not `test test`; a folder that says more (test-clean) stays."""
    scored = {"wer": 0.5, "cer": 0.25}

    def how(test: str, dev: str, test_scores: dict[str, float] = scored) -> str:
        return run_description("A model", split_summary(["data/demo/train"], 1, 60), "1 epoch (best: 1)",
                               split_summary([dev], 1, 60), scored, split_summary([test], 57, 96), test_scores,
                               ).split("\n\n")[1]

    assert how("data/demo/test", "data/demo/dev") == ("Held-out test (57 utterances, 1.6 min): WER 0.500, CER 0.250; "
                                                      "dev (1 utterance, 1.0 min): WER 0.500, CER 0.250 "
                                                      "(greedy decoding).")
    assert how("LibriSpeech/test-clean", "LibriSpeech/dev-clean").startswith(
        "Held-out test test-clean (57 utterances, 1.6 min): WER 0.500, CER 0.250; dev dev-clean (1 utterance")
    assert how("", "data/demo/dev", {}) == "No held-out test split; dev (1 utterance, 1.0 min): WER 0.500, CER " \
                                           "0.250 (greedy decoding)."


def test_split_digest_is_of_ids_and_transcripts_in_any_order():
    a, b = utterance("1-2-0000", "HELLO WORLD"), utterance("1-2-0001", "GOOD BYE")
    digest = split_digest([a, b])
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert split_digest([b, a]) == digest  # the same split read in another order
    assert split_digest([a, replace(b, path=Path("/elsewhere/x.wav"))]) == digest  # where the audio lies: no part
    assert split_digest([a, replace(b, transcript="GOOD BY")]) != digest  # another reference: another digest
    assert split_digest([a, replace(b, file_id="1-2-0002")]) != digest
    assert split_digest([a]) != digest
    # no id/transcript boundary ambiguity
    assert split_digest([utterance("1-2-0000", "A\t1-2-0001 B")]) != split_digest([
        utterance("1-2-0000", "A"), utterance("1-2-0001", "B")])


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def checkout_with_package(root: Path) -> Path:
    """A git repository holding a committed package folder `pkg` (an __init__.py); returns the package folder."""
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return pkg


def test_git_tags_name_the_checkout_the_package_runs_from(tmp_path: Path):
    pkg = checkout_with_package(tmp_path / "repo")
    head = git(pkg, "rev-parse", "HEAD")
    assert git_tags(pkg) == {"mlflow.source.git.commit": head, "mlflow.source.git.dirty": "false",
                             "mlflow.source.git.branch": "main"}
    (pkg / "__init__.py").write_text("x = 2\n")  # an uncommitted change to a tracked file
    assert git_tags(pkg)["mlflow.source.git.dirty"] == "true"
    git(pkg, "remote", "add", "origin", "https://user:secret-token@git.example.com/team/asr.git")
    assert git_tags(pkg)["mlflow.source.git.repoURL"] == "https://git.example.com/team/asr.git"
    git(pkg, "checkout", "-q", "--detach")
    assert "mlflow.source.git.branch" not in git_tags(pkg) and git_tags(pkg)["mlflow.source.git.commit"] == head


def test_no_git_tags_outside_a_checkout_or_for_an_untracked_package(tmp_path: Path):
    """A copy of the project, or a package lying untracked (an ignored virtualenv's site-packages) inside some
    checkout: no commit is claimed for it, and nothing fails."""
    copy = tmp_path / "copy" / "pkg"
    copy.mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    assert git_tags(copy) == {}
    repo = tmp_path / "repo"
    checkout_with_package(repo)
    (repo / ".gitignore").write_text(".venv/\n")
    installed = repo / ".venv" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert git_tags(installed) == {}
    assert without_credentials("git@github.com:team/asr.git") == "git@github.com:team/asr.git"


def test_source_tags_fill_in_what_mlflow_left_out(tmp_path: Path):
    pkg = checkout_with_package(tmp_path / "repo")
    head = git(pkg, "rev-parse", "HEAD")
    mine = source_tags({}, pkg)
    assert mine["mlflow.source.git.commit"] == head and {"torch_version", "torchaudio_version",
                                                          "mlflow_version"} <= set(mine)
    # `python main.py` / `mlflow run`: MLflow set the same commit (and maybe the branch); ours fill in the rest
    assert source_tags({"mlflow.source.git.commit": head, "mlflow.source.git.branch": "v1"}, pkg).keys() == \
        mine.keys() - {"mlflow.source.git.commit", "mlflow.source.git.branch"}
    # an entry script in another repository: MLflow's commit is about it, so none of ours are mixed in
    other = source_tags({"mlflow.source.git.commit": "0" * 40}, pkg)
    assert not any(k.startswith("mlflow.source.git.") for k in other)


def test_the_repository_itself_is_a_checkout_the_tags_name():
    """The tests run from a checkout: the package folder is tracked in it."""
    tags = git_tags(REPO / "asr")
    assert tags["mlflow.source.git.commit"] == git(REPO, "rev-parse", "HEAD")


@pytest.mark.slow
@pytest.mark.parametrize("on", [True, False])
def test_system_metrics_for_a_short_run_and_none_when_off(tiny_config, isolated_mlflow: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, on: bool):
    """A training of seconds, far shorter than the 10 s sampling interval, still gets a sample of MLflow's system
    metrics (MLflow alone would drop the partial interval); --system_metrics False gets none, even with MLflow's
    own switch on in the environment."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")  # no interval completes during the run
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    result = train(tiny_config(system_metrics=on, output_dir=str(tmp_path / "out")), progress=False)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    system = {k for k in run.data.metrics if k.startswith("system/")}
    if on:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/system_memory_usage_percentage"} <= system, system
        history = client.get_metric_history(result.run_id, "system/system_memory_usage_megabytes")
        assert len(history) == 1 and history[0].value > 0
    else:
        assert system == set()
    assert run.data.params["system_metrics"] == str(on)



def test_model_source_names_the_version_and_run_a_reference_loads(isolated_mlflow, tmp_path):
    """A run id or runs:/ URI names its run; a local file names nothing more; a registry alias that does not exist
    is ModelNotFound in one line (registered versions: tests/test_inference.py's evaluate test)."""
    from asr.loading import ModelNotFound, ModelSource, model_source
    from asr.tracking.lineage import model_tags

    run_id = "0123456789abcdef0123456789abcdef"
    assert model_source(run_id) == ModelSource(run_id, run_id=run_id)
    assert model_tags(model_source(f"runs:/{run_id}/model")) == {"model_run_id": run_id}
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    assert model_source(str(checkpoint)) == ModelSource(str(checkpoint)) and model_tags(ModelSource("x")) == {}
    with pytest.raises(ModelNotFound, match="^cannot load models:/NoSuchModel@production from ") as e:
        model_source("models:/NoSuchModel@production")
    assert "\n" not in str(e.value)
