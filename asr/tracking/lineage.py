"""What a training run came from and what it gave, on its MLflow run page, in MLflow's own terms: the splits it read as
dataset inputs ("Datasets"), the code (git commit, branch, dirty tree) and library versions as run tags, and the run's
description (`mlflow.note.content`)."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import torch
import torchaudio
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.types import ColSpec, DataType, Schema
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_DIRTY,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_RUN_NOTE,
)

import asr
from asr.data.dataset import Utterance, split_digest
from asr.tracking.registry import retrying

if TYPE_CHECKING:  # the type only: asr.loading brings the model and torch
    from asr.loading import ModelSource

# MLflow's dataset input contexts (the `mlflow.data.context` input tag) of the three splits a training run reads,
# and of the split `asr evaluate` scores
TRAINING, VALIDATION, TEST, EVALUATION = "training", "validation", "test", "evaluation"
# One row per utterance: what a split holds, though only its folder is logged (the audio stays where it is)
SPLIT_SCHEMA = Schema([ColSpec(DataType.string, "file_id"), ColSpec(DataType.string, "transcript"),
                       ColSpec(DataType.double, "seconds")])
# Run and registered-version tags of a fine-tuned model (--init_from): the model it started from (NAME/VERSION,
# runs:/RUN_ID/model, or a checkpoint's absolute path) and the sha256 of that checkpoint file, the exact weights
PARENT_TAG, PARENT_SHA256_TAG = "parent", "parent_sha256"
# Run tags naming a registered model version: the one a training run registered, the one an evaluate, validate or
# lm-tune run scored (a stage or alias resolved to its version), and the run that logged the model scored
REGISTERED_MODEL_TAG, MODEL_VERSION_TAG, MODEL_RUN_ID_TAG = "registered_model", "model_version", "model_run_id"
GIT_TIMEOUT = 10.0  # seconds a git command may take before the tags it would give are left out
VERSION_TAGS = ("torch_version", "torchaudio_version", "mlflow_version")


class SplitDataset(MetaDataset):
    """A corpus split as an MLflow dataset: its folder as the source, the split_digest of its utterances as the
    digest, SPLIT_SCHEMA, and utterances/speakers/hours as the profile, without loading any audio."""

    def __init__(self, split_dir: Path, utterances: Sequence[Utterance], seconds: float) -> None:
        self._profile = {"utterances": len(utterances), "speakers": len({u.speaker for u in utterances}),
                         "hours": round(seconds / 3600, 4)}
        super().__init__(LocalArtifactDatasetSource(str(split_dir)), name=f"{split_dir.parent.name}/{split_dir.name}",
                         digest=split_digest(utterances), schema=SPLIT_SCHEMA)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def split_datasets(split_dirs: Sequence[str | Path], utterances: Sequence[Utterance], seconds: Sequence[float]
                   ) -> list[SplitDataset]:
    """The utterances a run used (with their durations), as one dataset per split folder they were read from, so
    each keeps its own source path."""
    dirs = [Path(d) for d in split_dirs]
    groups: dict[Path, list[tuple[Utterance, float]]] = {d: [] for d in dirs}
    for u, s in zip(utterances, seconds, strict=True):
        home = next((d for d in dirs if u.path.is_relative_to(d)), dirs[0])
        groups[home].append((u, s))
    return [SplitDataset(d.absolute(), [u for u, _ in g], sum(s for _, s in g)) for d, g in groups.items() if g]


def log_split(context: str, split_dirs: Sequence[str | Path], utterances: Sequence[Utterance],
              seconds: Sequence[float]) -> None:
    """Logs the utterances the active run used for `context` (TRAINING, VALIDATION or TEST) as dataset inputs."""
    datasets = split_datasets(split_dirs, utterances, seconds)
    # Two runs of one experiment logging the same split at once race inside MLflow's SQL store (it looks the dataset
    # up, then inserts it: "UNIQUE constraint failed"); a retry finds the one the other run inserted.
    retrying(lambda: mlflow.log_inputs(datasets=datasets, contexts=[context] * len(datasets),
                                       tags_list=[None] * len(datasets)))


def _git(args: list[str], cwd: Path) -> str | None:
    """git's output in `cwd`, or None when git is missing, fails or hangs: a lineage tag is never worth a failed
    training."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def without_credentials(url: str) -> str:
    """A remote URL without the user and token an https remote may carry (tags are readable by anyone)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return url


def git_tags(package_dir: Path) -> dict[str, str]:
    """MLflow's git tags (commit, dirty flag, branch, repository URL) of the git checkout the code runs from; {}
    when it runs from no checkout (an installed wheel, a copy of the project, a model's code/ folder: the package
    must be tracked in the repository around it, not merely lie inside one) or git is missing."""
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_dir) is None:
        return {}
    commit = _git(["rev-parse", "HEAD"], package_dir)
    if not commit:
        return {}
    tags = {MLFLOW_GIT_COMMIT: commit}
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
    if status is not None:
        tags[MLFLOW_GIT_DIRTY] = str(bool(status)).lower()
    if branch := _git(["symbolic-ref", "--short", "-q", "HEAD"], package_dir):
        tags[MLFLOW_GIT_BRANCH] = branch
    remotes = (_git(["remote"], package_dir) or "").split()
    if remotes:
        remote = "origin" if "origin" in remotes else remotes[0]
        if url := _git(["remote", "get-url", remote], package_dir):
            tags[MLFLOW_GIT_REPO_URL] = without_credentials(url)
    return tags


def version_tags() -> dict[str, str]:
    """The versions of the libraries that decide what a run computes and how it is logged."""
    return dict(zip(VERSION_TAGS, (torch.__version__, torchaudio.__version__, mlflow.__version__), strict=True))


def source_tags(existing: dict[str, str], package_dir: Path | None = None) -> dict[str, str]:
    """The tags to add to a run whose tags are `existing`: the library versions, and the git tags MLflow left out.
    MLflow sets the commit itself only when the entry script lies in a checkout (`python main.py`, `mlflow run`),
    not for the `asr` console script; a commit it set for another repository (a script importing an installed
    asr) is kept, and no git tags of this package's checkout are mixed with it."""
    git = git_tags(package_dir or Path(asr.__file__).parent)
    if existing.get(MLFLOW_GIT_COMMIT, git.get(MLFLOW_GIT_COMMIT)) != git.get(MLFLOW_GIT_COMMIT):
        git = {}
    return {**{k: v for k, v in git.items() if k not in existing}, **version_tags()}


def model_tags(source: ModelSource) -> dict[str, str]:
    """The run tags saying which model a run scored: its registered name and version and the run that logged it,
    those known (none for a local checkpoint or folder)."""
    tags = {REGISTERED_MODEL_TAG: source.registered_model, MODEL_VERSION_TAG: source.version,
            MODEL_RUN_ID_TAG: source.run_id}
    return {k: v for k, v in tags.items() if v}


def parent_tags(run_id: str) -> dict[str, str]:
    """The parent tags run `run_id` carries ({} for a run trained from random weights): read from the run, so a
    resumed run's registered version gets them as the first part of the run set them."""
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    return {k: tags[k] for k in (PARENT_TAG, PARENT_SHA256_TAG) if k in tags}


def counted(n: int, what: str) -> str:
    """`1 epoch`, `12 epochs`."""
    return f"{n} {what}{'s' * (n != 1)}"


def audio_length(seconds: float) -> str:
    """Audio of a split: `5.4 h`, or `1.6 min` for less than an hour."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def split_summary(split_dirs: Sequence[str | Path], utterances: int, seconds: float) -> str:
    """e.g. `dev-clean (2703 utterances, 5.4 h)`, or `(13 utterances, 1.6 min)` for less than an hour."""
    return f"{'+'.join(Path(d).name for d in split_dirs)} ({counted(utterances, 'utterance')}, {audio_length(seconds)})"


def labelled(split: str, summary: str) -> str:
    """`split` (a split's role: test, dev) before a split_summary, its folder's name left out when that is the
    role again: `test (57 utterances, 1.6 min)`, not `test test (...)`; `test test-clean (...)` says more, and
    stays."""
    name, _, rest = summary.partition(" (")
    return f"{split} ({rest}" if name == split and rest else f"{split} {summary}"


def scores(scored: dict[str, float]) -> str:
    return f"WER {scored['wer']:.3f}, CER {scored['cer']:.3f}"


def run_description(model: str, train: str, epochs: str, dev: str, dev_scores: dict[str, float], test: str,
                    test_scores: dict[str, float], decoder: str = "greedy decoding") -> str:
    """The run's description (`mlflow.note.content`, Markdown), in two lines (a paragraph each, so the UI shows two
    lines): what was trained on what, then how well on the held-out test split (dev when there is none). `train`,
    `dev` and `test` are split_summary's; a split folder named test or dev is not named twice (labelled)."""
    what = f"{model}, trained {epochs} on {train}."
    if test_scores:
        how = f"Held-out {labelled('test', test)}: {scores(test_scores)}; {labelled('dev', dev)}: " \
              f"{scores(dev_scores)} ({decoder})."
    else:
        how = f"No held-out test split; {labelled('dev', dev)}: {scores(dev_scores)} ({decoder})."
    return f"{what}\n\n{how}"


def set_description(text: str) -> None:
    """Sets the active run's description: MLflow shows the `mlflow.note.content` tag as the run page's
    Description."""
    mlflow.set_tag(MLFLOW_RUN_NOTE, text)
