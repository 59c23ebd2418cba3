"""Where a training run stands and how it survives being stopped: the progress record, the training-state
checkpoint (`last.pt`, everything needed to continue bit-for-bit), resuming from it, and stop requests."""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asr import UserError
from asr import checkpoint as ckpt
from asr.config import from_dict, to_dict
from asr.settings import TrainConfig


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: the run was checkpointed and can be resumed."""


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""
    epoch: int = 0               # current epoch (0-based)
    batch: int = 0               # batches of that epoch already trained on
    step: int = 0                # optimizer steps taken
    best: tuple[float, float] = (math.inf, math.inf)  # best dev (WER, CER)
    best_epoch: int = 0
    bad_epochs: int = 0          # epochs since the best one (early stopping)
    skipped_steps: int = 0       # steps dropped for a non-finite loss or gradient
    registered: str = ""         # model version, once the run is complete (nothing left to resume)


@dataclass
class Resume:
    """A training-state checkpoint to continue from."""
    path: Path                   # its last.pt
    state: dict[str, Any]

    @property
    def out_dir(self) -> Path:
        return self.path.parent


def resume_point(cfg: TrainConfig) -> tuple[TrainConfig, Resume | None]:
    """With cfg.checkpoint.resume set, the run's own settings (resume kept) and its last training state; else
    (cfg, None). A training state written before the settings had sections keeps them all under "config"."""
    if not cfg.checkpoint.resume:
        return cfg, None
    path = ckpt.find_resumable(cfg.checkpoint.resume, cfg.checkpoint.output_dir)
    state = ckpt.load_training_state(path)
    settings = state.get("train_config", state["config"])
    return from_dict(TrainConfig, {**settings, "resume": cfg.checkpoint.resume}), Resume(path, state)


def training_state(cfg: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, progress: Progress,
                   run_id: str) -> dict[str, Any]:
    """last.pt: the model checkpoint plus every training setting and everything needed to continue bit-for-bit."""
    return {**ckpt.model_state(cfg.recognizer(), model), "train_config": to_dict(cfg),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "progress": to_dict(progress), "rng": ckpt.rng_states(), "run_id": run_id}


def restore(resume: Resume, model: nn.Module, optimizer, scheduler, scaler) -> tuple[Progress, dict | None]:
    """Loads the saved weights and optimizer, schedule and scaler states; returns the progress and the best epoch's
    weights so far (None when no epoch has finished). The random generators are restored separately, last."""
    state = resume.state
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    pos = Progress(**{**state["progress"], "best": tuple(state["progress"]["best"])})
    best = resume.out_dir / ckpt.BEST
    return pos, torch.load(best, map_location="cpu", weights_only=True)["model"] if best.is_file() else None


@contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag instead of killing the process: the loop finishes its step and checkpoints."""
    received: list[int] = []
    handler = lambda signum, frame: received.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted(stop: list[int], pos: Progress, path: Path, out_dir: Path) -> str:
    name = signal.Signals(stop[0]).name if stop else "another rank"
    return (f"stopped by {name} at step {pos.step} (epoch {pos.epoch + 1}); training state saved to {path}. "
            f"Resume with: asr train --resume {out_dir}")


def kill_point(name: str) -> None:
    """Fault injection for the reliability tests: with ASR_KILL_AT=name the process SIGKILLs itself here, as a
    `kill -9` landing at exactly this moment would (a kill from outside can miss a window this short). With
    ASR_KILL_WAIT=FILE as well, it creates FILE and waits here instead, for the test to kill it (its whole process
    group, loader workers included): a kill timed from outside races a process that keeps running, and under load
    lands late or after the process has finished."""
    if os.environ.get("ASR_KILL_AT") != name:
        return
    if wait := os.environ.get("ASR_KILL_WAIT"):
        Path(wait).touch()
        while True:  # a stop request (SIGINT/SIGTERM) only sets a flag here: keep waiting for the SIGKILL
            time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)
