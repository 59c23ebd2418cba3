"""One environment everywhere: pyproject.toml's ranges, requirements.lock, conda.yaml, the installed packages and
the requirements logged with a model must agree, and a logged model must list everything it imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import distributions
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from conftest import REPO, split_dir
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from asr.tracking.requirements import (
    IMPORTED_WHEN_INSTALLED,
    MODEL_DISTRIBUTIONS,
    Locked,
    LockError,
    closure,
    conda_yaml,
    model_requirements,
    read_lock,
)

LOCK = read_lock(REPO / "requirements.lock")


def declared() -> list[Requirement]:
    """Every requirement pyproject.toml declares: runtime, extras, and the build backend."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = [d for group in project["project"].get("optional-dependencies", {}).values() for d in group]
    return [Requirement(d) for d in (*project["project"]["dependencies"], *extras,
                                     *project["build-system"]["requires"])]


def applies_here(entry: Locked) -> bool:
    return not entry.marker or Marker(entry.marker).evaluate()


def test_every_declared_dependency_is_locked_within_its_range():
    problems = []
    for req in declared():
        entries = [e for e in LOCK if e.name == canonicalize_name(req.name)]
        if not entries:
            problems.append(f"{req.name} is not in the lock")
        problems += [f"{req} but the lock has {e.requirement}" for e in entries
                     if not req.specifier.contains(e.version, prereleases=True)]
    assert not problems, "pyproject.toml and requirements.lock disagree (run `make lock`): " + "; ".join(problems)


def test_the_lock_requires_exactly_the_declared_packages():
    """The lock's `via pyproject.toml` packages are pyproject.toml's: none added or dropped on one side only."""
    runtime_and_extras = {canonicalize_name(r.name) for r in declared()} - {"setuptools"}
    locked_direct = {e.name for e in LOCK if "project" in e.required_by}
    assert locked_direct == runtime_and_extras, (
        f"run `make lock`: declared but not locked as direct: {sorted(runtime_and_extras - locked_direct)}; "
        f"locked as direct but not declared: {sorted(locked_direct - runtime_and_extras)}")


def test_the_locked_torch_and_torchaudio_load_together():
    """In a fresh process, as `python -m asr.tracking.requirements check` runs it in CI before the tests."""
    proc = subprocess.run([sys.executable, "-m", "asr.tracking.requirements", "check"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    pins = {e.name: e.version for e in LOCK if applies_here(e)}
    assert f"torch {pins['torch']}  torchaudio {pins['torchaudio']}" in proc.stdout


def test_conda_yaml_is_generated_from_the_lock():
    assert (REPO / "conda.yaml").read_text() == conda_yaml(LOCK), \
        "conda.yaml differs from requirements.lock: run `make lock`"


def test_the_installed_environment_is_the_lock():
    """What the tests run on is what a fresh `make install` gives: every lock entry for this platform, exactly."""
    wrong = [f"{e.requirement} but {installed_version(e.name)} is installed" for e in LOCK
             if applies_here(e) and installed_version(e.name) != e.version]
    assert not wrong, "the environment is not the lock (run `make install`): " + "; ".join(wrong)


def test_model_requirements_are_lock_lines_closed_under_dependencies():
    lines = model_requirements()
    assert set(lines) <= {e.requirement for e in LOCK}
    names = {Requirement(line).name for line in lines}
    assert {canonicalize_name(n) for n in MODEL_DISTRIBUTIONS} <= names
    for e in LOCK:
        if e.name in names:
            continue
        assert not names.intersection(e.required_by), f"{e.name} is required by the model's packages but not listed"
    assert "pytest" not in names and "jiwer" not in names  # training and test tools stay out of served models


def test_closure_and_lock_reading_errors(tmp_path):
    with pytest.raises(LockError, match="git checkout requirements.lock"):
        read_lock(tmp_path / "missing.lock")
    (tmp_path / "empty.lock").write_text("# nothing pinned\n")
    with pytest.raises(LockError, match="no pinned package"):
        read_lock(tmp_path / "empty.lock")
    with pytest.raises(LockError, match="not in the lock: no-such-package"):
        closure(LOCK, ["torch", "No_Such.Package"])
    lines = model_requirements(tmp_path / "missing.lock")  # outside a checkout: installed versions, direct only
    installed = [n for n in IMPORTED_WHEN_INSTALLED if n in {canonicalize_name(d.metadata["Name"])
                                                             for d in distributions()}]
    assert lines == [f"{n}=={installed_version(n).split('+')[0]}" for n in (*MODEL_DISTRIBUTIONS, *installed)]


IMPORTS_OF_A_LOADED_MODEL = """
import json, sys
from importlib.metadata import packages_distributions
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
audio = pd.DataFrame({"audio": [sys.argv[2]]})
texts = [model.predict(audio)["text"][0], model.predict(audio, params={"lm": sys.argv[3]})["text"][0]]
owners = packages_distributions()
print(json.dumps(sorted({d for m in list(sys.modules) for d in owners.get(m.split(".")[0], [])})))
"""


@pytest.mark.slow  # a trained model, real LibriSpeech audio, a fresh process
def test_a_logged_model_requires_everything_it_imports_at_the_locked_versions(trained, tmp_path):
    """Loads the registered model in a fresh process, transcribes with greedy and with beam search + LM, and
    checks every distribution that process imported against the model's requirements.txt and the lock."""
    from asr.lm import build_arpa

    model_dir = next(Path(trained.root, "mlruns").rglob("MLmodel")).parent
    lines = [line for line in (model_dir / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    listed = {canonicalize_name(Requirement(line).name) for line in lines}
    lm = tmp_path / "lm.arpa"
    build_arpa(["he hoped there would be stew", "stew for dinner"], order=2, out=lm)
    audio = next(split_dir("test-clean").rglob("*.flac"))
    roots = os.pathsep.join([str(audio.parent), str(tmp_path)])  # the audio and the LM go in as paths
    proc = subprocess.run([sys.executable, "-c", IMPORTS_OF_A_LOADED_MODEL, str(model_dir), str(audio), str(lm)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=os.environ | {"ASR_SERVE_ALLOWED_ROOTS": roots})
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {canonicalize_name(d) for d in json.loads(proc.stdout.splitlines()[-1])} - {"asr-mlflow"}
    assert "flashlight-text" in imported  # beam search ran
    assert imported <= listed, f"imported but not required: {sorted(imported - listed)}"
    canonical = {str(Requirement(line)) for line in lines}  # MLflow rewrites the lines in its own spelling
    locked = {str(Requirement(e.requirement)) for e in LOCK}
    assert canonical <= locked, f"not at the locked versions: {sorted(canonical - locked)}"


def test_a_torchaudio_library_that_does_not_load_is_named_in_one_line():
    """torch wraps the linker's error; the line names both installed versions and the linker's reason."""
    from asr.tracking.requirements import torchaudio_load_error

    try:
        try:
            raise OSError("/venv/torchaudio/lib/libtorchaudio.so: undefined symbol: torch_exception_get_what")
        except OSError as linker:
            raise OSError("Could not load this library: /venv/torchaudio/lib/libtorchaudio.so") from linker
    except OSError as e:
        message = torchaudio_load_error(e)
    assert message is not None and "\n" not in message
    assert f"torchaudio {installed_version('torchaudio')} does not load beside torch {installed_version('torch')}" \
        in message
    assert "undefined symbol: torch_exception_get_what" in message and "make install" in message
    cuda = RuntimeError("Detected that PyTorch and TorchAudio were compiled with different CUDA versions. PyTorch "
                        "has CUDA version 13.2 whereas TorchAudio has CUDA version 13.0.")
    assert "different CUDA versions" in torchaudio_load_error(cuda)
    assert torchaudio_load_error(OSError("No space left on device")) is None
