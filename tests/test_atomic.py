"""asr.atomic: a file appears whole or not at all, and concurrent writers of one path never share a temp file."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest
import torch

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
