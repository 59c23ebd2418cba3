"""Checkpoints, loadable without unpickling arbitrary objects (`torch.load(..., weights_only=True)`).

Two kinds: a model checkpoint (config + vocabulary with its language and case rule + weights: what is logged and
served; one that stores no vocabulary is English, as every checkpoint was before vocabularies were stored) and a
training state (`last.pt`: that plus optimizer, scheduler, scaler, position in the epoch, RNG states and the MLflow
run id: everything needed to continue exactly where training stopped). Both are written atomically.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import torch

from asr import UserError, first_line
from asr.atomic import atomic_path
from asr.config import RecognizerConfig, from_dict, to_dict
from asr.model import SpeechModel
from asr.text import ENGLISH_TEXT, TextNormalizer
from asr.vocabulary import VocabularyError

LAST = "last.pt"   # training state, rewritten every few steps and at every epoch end
BEST = "best.pt"   # model checkpoint of the best epoch so far
MODEL = "model.pt" # the final model (best epoch's weights): what gets logged and registered


class CheckpointError(UserError):
    """A checkpoint that cannot be written, found or used."""


class _KeepWriteError:
    """A file wrapper for torch.save, which turns a failed write into a RuntimeError ("unexpected pos ...") that
    loses the reason: this keeps the OSError (no space left, file too large) so the message can say it."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save through asr.atomic (one writer: a killed save's hidden `.NAME.tmp` never matches a checkpoint name
    and the next save of that checkpoint overwrites it). Raises CheckpointError naming the disk's reason."""
    writer = None
    try:
        with atomic_path(path, shared=False) as tmp, open(tmp, "wb") as f:
            writer = _KeepWriteError(f)
            torch.save(obj, writer)
    except (OSError, RuntimeError) as e:
        error = e if isinstance(e, OSError) else writer and writer.error
        if error is None:
            raise  # a serialization bug, not the disk
        raise CheckpointError(write_failure(path, error)) from None
    return path


def write_failure(path: Path, error: OSError) -> str:
    """One line: what could not be written, why, and what is left to continue from."""
    if not path.exists():
        return f"could not write checkpoint {path}: {error.strerror or error} (no earlier one there)"
    resume = f"; asr train --resume {path.parent} continues from it" if path.name == LAST else ""
    return f"could not write checkpoint {path}: {error.strerror or error}; the previous one is intact{resume}"


def model_state(cfg: RecognizerConfig, model: SpeechModel, text: TextNormalizer = ENGLISH_TEXT) -> dict[str, Any]:
    """What inference needs, and nothing else: the feature and model settings (flat), the vocabulary ("vocab") with
    the language and case rule of its normalization ("text") and the weights."""
    text_json = text.to_json()
    return {"config": to_dict(RecognizerConfig(cfg.features, cfg.model)), "vocab": text_json.pop("vocab"),
            "text": {"language": text_json["language"], "lowercase": text_json["lowercase"]},
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def save_checkpoint(path: Path, cfg: RecognizerConfig, model: SpeechModel, text: TextNormalizer = ENGLISH_TEXT
                    ) -> Path:
    return atomic_save(model_state(cfg, model, text), path)


def checkpoint_text(state: dict[str, Any], path: str | Path = "checkpoint") -> TextNormalizer:
    """The text normalization a loaded checkpoint stores; English when it stores no vocabulary (written before
    vocabularies were stored). Raises CheckpointError for a stored vocabulary that cannot be used."""
    if "vocab" not in state:
        return ENGLISH_TEXT
    try:
        return TextNormalizer.from_json({"vocab": state["vocab"], **state.get("text", {})}, f"{path}: vocabulary")
    except VocabularyError as e:
        raise CheckpointError(str(e)) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents (config, vocab, model weights, and a training state's extras), whatever its
    vocabulary: what a fine-tuning run starts from. Raises CheckpointError for a missing, unsafe or unreadable
    file."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file" if Path(path).is_dir()
                              else f"checkpoint not found: {path}")
    _refuse_foreign(Path(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} refused: it holds Python objects besides tensors and plain values, and "
                              "loading those could run code (only weights_only checkpoints are loaded)") from None
    except Exception as e:  # truncated or foreign files raise a variety of pickle/zip errors
        raise CheckpointError(f"{path} is not a readable checkpoint: {first_line(e)}") from None
    if not isinstance(state, dict) or not {"config", "model"} <= state.keys():
        raise CheckpointError(f"{path} is not a model checkpoint of this package (no config and weights in it)")
    return state


def export_kind(path: Path) -> str | None:
    """'TorchScript' or 'ONNX' when the file at `path` is such an export (what `asr export` writes), else None.
    TorchScript: a zip archive with a constants.pkl record (torch's own test); ONNX: a protobuf ModelProto that
    the onnx package parses and that holds a graph."""
    with open(path, "rb") as f:
        head = f.read(1)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return "TorchScript" if any(n.split("/", 1)[-1] == "constants.pkl" for n in names) else None
    if head != b"\x08":  # an ONNX ModelProto starts with field 1 (ir_version, a varint)
        return None
    try:
        import onnx

        return "ONNX" if onnx.load(str(path), load_external_data=False).graph.node else None
    except Exception:  # not protobuf, or not a model: the caller says what it is not
        return None


def _refuse_foreign(path: Path) -> None:
    """Raises CheckpointError, in one line saying what the file is, for an export or a file that no torch.save
    wrote (neither a zip archive nor a pickle), before torch.load reads it."""
    kind = export_kind(path)
    if kind:
        article = "an" if kind == "ONNX" else "a"
        raise CheckpointError(f"{path} is {article} {kind} export (what asr export writes), not a checkpoint: give "
                              "the checkpoint, run folder or models:/ URI it was exported from")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (or, legacy, a pickle)
        raise CheckpointError(f"{path} is not a checkpoint (not a file torch.save wrote: give a model.pt, best.pt "
                              "or last.pt)")


def _load(path: str | Path) -> dict[str, Any]:
    state = read_checkpoint(path)
    return state


def load_checkpoint(path: str | Path) -> tuple[RecognizerConfig, SpeechModel]:
    """The settings and model (eval mode) of a model or training checkpoint (see load_recognizer)."""
    cfg, model, _ = load_recognizer(path)
    return cfg, model


def load_recognizer(path: str | Path) -> tuple[RecognizerConfig, SpeechModel, TextNormalizer]:
    """The settings, model (eval mode, one output per vocabulary symbol) and text normalization of a model or
    training checkpoint. Checkpoints written before the settings had sections hold every training setting, flat:
    the feature and model ones are picked out. Raises CheckpointError for a file that is no checkpoint, or whose
    weights do not fit its vocabulary."""
    state = _load(path)
    cfg = from_dict(RecognizerConfig, state["config"])
    text = checkpoint_text(state, path)
    model = SpeechModel.from_config(cfg, len(text.vocabulary))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # shapes that do not fit: e.g. an output layer of another size than the vocabulary
        raise CheckpointError(f"{path}: its weights do not fit its settings and {len(text.vocabulary)}-symbol "
                              f"vocabulary: {first_line(e)}") from None
    return cfg, model.eval(), text


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_training_state(path: Path) -> dict[str, Any]:
    state = _load(path)
    if "optimizer" not in state:
        raise CheckpointError(f"{path} holds a model, not a training state to resume from (expected {LAST})")
    if state["progress"].get("registered"):
        raise CheckpointError(f"{path}: run {state['run_id']} already finished (registered as version "
                              f"{state['progress']['registered']}); nothing to resume")
    return state


def find_resumable(spec: str, output_dir: str) -> Path:
    """`--resume` target: a last.pt, a run folder holding one, or 'latest' (newest last.pt under output_dir)."""
    if spec == "latest":
        found = sorted(Path(output_dir).glob(f"*/{LAST}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CheckpointError(f"--resume latest: no {LAST} under {output_dir}/; nothing to resume")
        # the newest run, finished or not: resuming a finished one says so rather than picking an older run
        return found[-1]
    path = Path(spec)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"--resume {spec}: {path} not found (give OUTPUT_DIR/RUN_ID, its {LAST}, or latest)")
    return path
