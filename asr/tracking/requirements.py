"""The locked environment: requirements.lock read as data, and what is derived from it.

`make lock` resolves pyproject.toml's dependencies with uv for every platform and writes requirements.lock: every
package, direct and transitive, at an exact version with its hashes and platform markers, and under each the
packages that require it (uv's `# via` lines). From that one list come `make install`, conda.yaml
(`python -m asr.tracking.requirements conda`) and the pip requirements logged with every model: the packages a
served model imports and everything they require, at the locked versions. `python -m asr.tracking.requirements
check` prints the versions that matter and fails in one line when torchaudio does not load beside the installed
torch.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from asr import first_line

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
# What a logged model imports when it is loaded and asked to transcribe (greedy or beam search with an LM); a test
# loads a logged model in a fresh process and checks that every distribution it imported is among their closure.
MODEL_DISTRIBUTIONS = ("torch", "torchaudio", "flashlight-text", "mlflow", "numpy", "pandas", "soundfile", "tqdm")
# Imported along with those whenever installed (mlflow imports psutil, torch pynvml): a logged model requires them
# when the lock holds them (training's system metrics need them).
IMPORTED_WHEN_INSTALLED = ("psutil", "nvidia-ml-py")
REPORTED = ("torch", "torchaudio", "mlflow", "numpy")
REINSTALL = "install the locked versions: make install (or pip install -r requirements.lock)"


class LockError(Exception):
    """requirements.lock is missing, unreadable or does not hold a package it must."""


@dataclass(frozen=True)
class Locked:
    """One line of the lock: a package at an exact version, the marker saying where it applies ('' = everywhere),
    and the names of the locked packages that require it (`project` for pyproject.toml's own dependencies)."""
    name: str
    version: str
    marker: str
    required_by: tuple[str, ...]

    @property
    def requirement(self) -> str:
        """The pip requirement line, e.g. `triton==3.6.0 ; sys_platform == 'linux'`."""
        return f"{self.name}=={self.version}" + (f" ; {self.marker}" if self.marker else "")


def read_lock(path: Path = LOCK) -> list[Locked]:
    """The lock's packages in file order. A name appears once per platform fork (e.g. numpy for Python < 3.12 and
    for >= 3.12). Raises LockError when the file is missing or holds no package."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise LockError(f"cannot read the lock {path}: {e.strerror or e}; restore it (git checkout "
                        "requirements.lock)") from e
    entries: list[Locked] = []
    head: tuple[str, str, str] | None = None
    via: list[str] = []
    for line in lines + [""]:
        top = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$", line)
        if top or not line.startswith(" "):
            if head:
                entries.append(Locked(*head, tuple(via)))
            head, via = (canonicalize_name(top[1]), top[2], top[3] or "") if top else None, []
            continue
        if not line.lstrip().startswith("#"):
            continue  # a --hash line
        comment = line.strip().removeprefix("#").strip()
        parent = comment[4:] if comment.startswith("via ") else "" if comment == "via" else comment
        if parent:
            via.append("project" if parent.endswith("(pyproject.toml)") else canonicalize_name(parent))
    if not entries:
        raise LockError(f"{path} holds no pinned package; run `make lock`")
    return entries


def closure(lock: list[Locked], roots: list[str]) -> list[Locked]:
    """The lock entries of `roots` and of everything they require, transitively, on any platform (markers kept).

    Raises LockError when a root is not in the lock."""
    names = {canonicalize_name(r) for r in roots}
    missing = names - {e.name for e in lock}
    if missing:
        raise LockError(f"not in the lock: {', '.join(sorted(missing))}; add to pyproject.toml and run `make lock`")
    grew = True
    while grew:
        before = len(names)
        names |= {e.name for e in lock if names.intersection(e.required_by)}
        grew = len(names) > before
    return [e for e in lock if e.name in names]


def direct_dependencies(pyproject: Path = PYPROJECT) -> list[str]:
    """pyproject.toml's [project] dependencies, as written (name and range)."""
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def model_requirements(lock_path: Path = LOCK) -> list[str]:
    """pip requirement lines for a logged model: MODEL_DISTRIBUTIONS and all they require, at the locked versions.

    Outside a checkout (no lock beside the package) it falls back to the installed versions of
    MODEL_DISTRIBUTIONS alone (and of IMPORTED_WHEN_INSTALLED, where installed), and says so on stderr."""
    try:
        lock = read_lock(lock_path)
        locked = {e.name for e in lock}
        return [e.requirement for e in closure(lock, [*MODEL_DISTRIBUTIONS,
                                                      *(n for n in IMPORTED_WHEN_INSTALLED if n in locked)])]
    except LockError as e:
        print(f"warning: {e}; the model's requirements pin only its direct imports, at the installed versions",
              file=sys.stderr)
        names = [*MODEL_DISTRIBUTIONS, *(n for n in IMPORTED_WHEN_INSTALLED if _installed(n))]
        return [f"{name}=={installed_version(name).split('+')[0]}" for name in names]


def _installed(name: str) -> bool:
    try:
        installed_version(name)
    except PackageNotFoundError:
        return False
    return True


def conda_yaml(lock: list[Locked], pyproject: Path = PYPROJECT) -> str:
    """conda.yaml for `mlflow run` without --env-manager local: the runtime closure of the lock, as pip lines."""
    python = re.search(r"\d+\.\d+", tomllib.loads(pyproject.read_text())["project"]["requires-python"])[0]
    roots = ["pip", *(Requirement(d).name for d in direct_dependencies(pyproject))]
    lines = [
        "# Environment for `mlflow run` without --env-manager local: the runtime part of requirements.lock.",
        "# Generated by `make lock` (python -m asr.tracking.requirements conda); a test fails when it differs",
        "# from the lock.",
        "name: speech-recognition",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={python}",
        "  - pip",
        "  - pip:",
        *(f'      - "{e.requirement}"' for e in closure(lock, roots)),
    ]
    return "\n".join(lines) + "\n"


def version_of(name: str) -> str:
    """The installed version of distribution `name`, or "not installed"."""
    try:
        return installed_version(name)
    except PackageNotFoundError:
        return "not installed"


def torchaudio_load_error(e: BaseException) -> str | None:
    """One line naming both versions when `e` is torchaudio failing to load beside the installed torch, else None.

    A torchaudio wheel loads beside a few torch releases only: outside them its library misses symbols (OSError from
    torch.ops.load_library, the linker's reason as its cause) or its CUDA version check fails (RuntimeError)."""
    chain = [e]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)  # torch says "Could not load this library"; the linker's reason is below
    if not any("libtorchaudio" in str(c) or "PyTorch and TorchAudio" in str(c) for c in chain):
        return None
    return (f"torchaudio {version_of('torchaudio')} does not load beside torch {version_of('torch')} "
            f"({first_line(chain[-1])}); {REINSTALL}")


def check_torchaudio() -> None:
    """Imports torch and torchaudio, which loads torchaudio's compiled library. Raises SystemExit with one line
    naming both versions when they do not load together."""
    try:
        import torch  # noqa: F401
        import torchaudio  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:  # RuntimeError: torchaudio's own CUDA version check
        raise SystemExit(torchaudio_load_error(e) or f"cannot import torch {version_of('torch')} and torchaudio "
                         f"{version_of('torchaudio')} ({first_line(e)}); {REINSTALL}") from None


def main(argv: list[str]) -> None:
    command = argv[0] if len(argv) == 1 else ""
    if command == "conda":
        sys.stdout.write(conda_yaml(read_lock()))
    elif command == "check":
        print("  ".join(f"{name} {version_of(name)}" for name in REPORTED))
        check_torchaudio()
        print("torch and torchaudio load together")
    else:
        raise SystemExit("usage: python -m asr.tracking.requirements conda|check")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except LockError as e:
        raise SystemExit(str(e)) from None
