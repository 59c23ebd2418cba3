"""asr.atomic: a file appears whole or not at all, and concurrent writers of one path never share a temp file."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from asr.atomic import atomic_path


def test_a_failed_write_leaves_the_previous_file_and_no_temp_file(tmp_path: Path):
    target = tmp_path / "sub" / "lm.arpa"
    with atomic_path(target) as tmp:
        tmp.write_text("good\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "good\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["lm.arpa"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_shared_writers_get_their_own_temp_files_and_single_writers_a_fixed_one(tmp_path: Path):
    target = tmp_path / "features.pt"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path and a.name.startswith(".features.pt.")
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the last rename wins, whole
    with atomic_path(target, shared=False) as tmp:
        assert tmp == tmp_path / ".features.pt.tmp"
        tmp.write_text("c")
    assert target.read_text() == "c" and not (tmp_path / ".features.pt.tmp").exists()


def _save_many(path: str, value: int) -> None:
    for _ in range(20):
        with atomic_path(Path(path)) as tmp:
            torch.save({"value": value, "payload": torch.full((20_000,), value)}, tmp)


def test_two_processes_writing_one_cache_file_leave_a_whole_one(tmp_path: Path):
    """What two runs featurizing the same split at once do to the feature cache."""
    target = tmp_path / "cache.pt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(str(target), v)) for v in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    saved = torch.load(target, weights_only=True)
    assert bool((saved["payload"] == saved["value"]).all())
    assert [p.name for p in tmp_path.iterdir()] == ["cache.pt"]


def test_the_folder_is_fsynced_after_the_rename(tmp_path: Path):
    """Traced system calls of a real write: the rename is followed by an fsync of the folder, so a power loss
    right after a save cannot bring the previous file back (a kill never could)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    target, trace = tmp_path / "last.pt", tmp_path / "trace.txt"
    write = ("import sys; from pathlib import Path; from asr.atomic import atomic_path\n"
             "with atomic_path(Path(sys.argv[1]), shared=False) as tmp: tmp.write_text('whole')")
    done = subprocess.run([strace, "-qq", "-o", str(trace), "-e", "trace=openat,rename,renameat,renameat2,fsync",
                           sys.executable, "-c", write, str(target)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    calls = [re.sub(r"\s+=", " =", c) for c in trace.read_text().splitlines()]
    renamed = next(i for i, c in enumerate(calls) if c.startswith("rename") and f'"{target}"' in c)
    opened = [re.search(r"= (\d+)$", c) for c in calls[renamed:]
              if c.startswith("openat(") and f'"{tmp_path}"' in c and "O_DIRECTORY" in c]
    assert opened and opened[0], f"the folder is not opened after the rename:\n{chr(10).join(calls[renamed:])}"
    assert f"fsync({opened[0].group(1)}) = 0" in calls[renamed:], "\n".join(calls[renamed:])
    assert target.read_text() == "whole"
