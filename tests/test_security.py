"""Nothing unpickles untrusted files: a checkpoint whose unpickling would run code is refused, by the library
and by every command that takes a checkpoint path, and the code never runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import asr_command, one_line_error, run_cli

from asr.checkpoint import CheckpointError, load_checkpoint
from asr.loading import load_transcriber

pytestmark = pytest.mark.slow  # CLI subprocesses on a trained model


class Payload:
    """Unpickling this creates the marker file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "outputs" / "0123456789abcdef0123456789abcdef" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": Payload(marker), "config": {}}, path)
    return path, marker


def test_library_refuses_a_checkpoint_that_would_run_code(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_transcriber(str(path.parent))  # the OUTPUT_DIR/RUN_ID form
    assert not marker.exists()


@pytest.mark.parametrize("command", [["transcribe", "--model-uri", "{ckpt}", "{audio}"],
                                     ["export", "--model-uri", "{ckpt}", "--out", "{out}"],
                                     ["evaluate", "--model_uri", "{ckpt}", "--dataset", "{data}"]])
def test_commands_refuse_it_in_one_line(evil_checkpoint, tmp_path, short_dev, command):
    path, marker = evil_checkpoint
    audio = next(short_dev.glob("*/*/*.flac"))
    args = [a.format(ckpt=path, audio=audio, out=tmp_path / "x.pt", data=short_dev) for a in command]
    proc = run_cli(asr_command() + args, cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert str(path) in proc.stderr or "checkpoint" in proc.stderr
    assert not marker.exists()
