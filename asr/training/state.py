"""Where a training run stands and how it survives being stopped: the progress record, the training-state
checkpoint (`last.pt`, everything needed to continue bit-for-bit), resuming from it, and stop requests."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Collection
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asr import UserError
from asr import checkpoint as ckpt
from asr.config import ConfigError, cli_value, from_dict, given_settings, to_dict
from asr.settings import TrainConfig
from asr.text import ENGLISH_TEXT, TextNormalizer


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
    seconds: float = 0.0         # wall time of the run as of this checkpoint, every part of a resumed run summed


# Settings a resumed run takes from the command line: they act after training (which name the model is registered
# under, whether it is promoted), on what and where the run logs, or on where its features are kept (the same
# features either way), never on the weights.
CHANGEABLE_ON_RESUME = ("registered_model", "promote", "offline_ok", "system_metrics", "feature_cache")
# Settings that say which run to resume, not how it trains (--resume latest looks in --output_dir).
LOCATING = ("resume", "output_dir")


@dataclass
class Resume:
    """A training-state checkpoint to continue from."""
    path: Path                   # its last.pt
    state: dict[str, Any]
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # setting -> (the run's, now)

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    def describe_changes(self) -> str:
        return ", ".join(f"{k} {cli_value(old)} -> {cli_value(new)}" for k, (old, new) in self.changed.items())


def resume_point(cfg: TrainConfig, given: Collection[str] | None = None) -> tuple[TrainConfig, Resume | None]:
    """With cfg.checkpoint.resume set, the run's own settings and its last training state; else (cfg, None).

    `given` names the settings the user asked for (None: those that differ from the defaults). The run keeps its
    training settings, since the weights so far were trained with them: one given with another value is refused
    (ConfigError naming it), except CHANGEABLE_ON_RESUME, which are taken (Resume.changed says which). A training
    state written before the settings had sections keeps them all under "config"."""
    if not cfg.checkpoint.resume:
        return cfg, None
    path = ckpt.find_resumable(cfg.checkpoint.resume, cfg.checkpoint.output_dir)
    state = ckpt.load_training_state(path)
    saved = state.get("train_config", state["config"])
    asked = to_dict(cfg)
    defaults = to_dict(TrainConfig())
    given = given_settings(cfg, given)
    differ = {k: (saved.get(k, defaults[k]), asked[k]) for k in sorted(set(given) & set(asked) - set(LOCATING))
              if _as_given(saved.get(k, defaults[k])) != _as_given(asked[k])}
    refused = {k: v for k, v in differ.items() if k not in CHANGEABLE_ON_RESUME}
    if refused:
        listed = ", ".join(f"--{k} {cli_value(new)} (the run's: {cli_value(old)})" for k, (old, new) in refused.items())
        raise ConfigError(f"--resume {cfg.checkpoint.resume}: {listed}: a resumed run keeps the settings its weights "
                          f"were trained with; only --{', --'.join(CHANGEABLE_ON_RESUME)} may change (start a new "
                          "run for the rest)")
    taken = {k: new for k, (_, new) in differ.items()}
    try:
        run_cfg = from_dict(TrainConfig, {**saved, **taken, "resume": cfg.checkpoint.resume})
    except ConfigError as e:  # e.g. a registered model name an earlier version accepted
        raise ConfigError(f"{path}: {e} (with --resume, give a new value for --"
                          f"{', --'.join(CHANGEABLE_ON_RESUME)}; not for the others)") from None
    return run_cfg, Resume(path, state, differ)


def _as_given(value: Any) -> Any:
    """A setting as the command line spells it (lists comma-separated), so saved and given values compare."""
    return cli_value(tuple(value) if isinstance(value, list) else value)


def training_state(cfg: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, progress: Progress,
                   run_id: str, text: TextNormalizer = ENGLISH_TEXT) -> dict[str, Any]:
    """last.pt: the model checkpoint (with the run's text normalization) plus every training setting and everything
    needed to continue bit-for-bit."""
    return {**ckpt.model_state(cfg.recognizer(), model, text), "train_config": to_dict(cfg),
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
