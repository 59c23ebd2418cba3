"""Fine-tuning (--init_from, --freeze): a new run that starts from a trained model's weights instead of random ones,
with that model's features and shape, a fresh output layer when its classes differ from this run's, and named
blocks kept fixed. Optimizer, schedule and progress start fresh: continuing a run is --resume, not this."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from asr import UserError
from asr import checkpoint as ckpt
from asr.config import ConfigError, RecognizerConfig, cli_value, from_dict, given_settings, to_dict
from asr.loading import fetch_checkpoint
from asr.model import SpeechModel
from asr.settings import TrainConfig
from asr.tracking.lineage import PARENT_SHA256_TAG, PARENT_TAG

# Feature and model settings a fine-tuning run may set for itself: they shape no weight
FREE = ("dropout",)


@dataclass
class Parent:
    """The model a fine-tuning run starts from, read into memory."""
    reference: str                     # --init_from as given
    name: str                          # as the lineage tags record it (see asr.loading.fetch_checkpoint)
    sha256: str                        # of its checkpoint file: the exact weights started from
    recognizer: RecognizerConfig       # its features and model shape
    vocab: tuple[str, ...]             # its output classes
    weights: dict[str, torch.Tensor]   # its state dict

    def tags(self) -> dict[str, str]:
        """The run's and its registered version's lineage tags."""
        return {PARENT_TAG: self.name, PARENT_SHA256_TAG: self.sha256}


def resolve(cfg: TrainConfig, given: Collection[str] | None, resuming: bool) -> tuple[TrainConfig, Parent | None]:
    """For a new run with --init_from: `cfg` with the parent's architecture (see take_architecture), and the parent.
    Otherwise `cfg` and None (a resumed run loads its own weights). Raises ConfigError, before any data is read, for
    a parent that cannot be loaded or settings that contradict it."""
    if resuming or not cfg.finetune.init_from:
        return cfg, None
    parent = find_parent(cfg.finetune.init_from)
    return take_architecture(cfg, parent, given), parent


def find_parent(ref: str) -> Parent:
    """The model `ref` names (any form asr.load takes; one in the tracking store is downloaded to a temporary folder
    first). Raises ConfigError, one line naming --init_from, for a reference that names nothing loadable."""
    try:
        with tempfile.TemporaryDirectory(prefix="asr-parent-") as tmp:
            path, name = fetch_checkpoint(ref, Path(tmp))
            state = ckpt.read_checkpoint(path)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
    except UserError as e:
        message = str(e)
        raise ConfigError(f"--init_from {message}" if message.startswith(ref) else
                          f"--init_from {ref}: {message}") from None
    return Parent(ref, name, digest, from_dict(RecognizerConfig, state["config"]), tuple(state.get("vocab", ())),
                  state["model"])


def take_architecture(cfg: TrainConfig, parent: Parent, given: Collection[str] | None) -> TrainConfig:
    """`cfg` with the parent's feature and model settings, but those of FREE that the user gave (`given`; None: the
    ones that differ from the defaults). Raises ConfigError naming every other given setting that contradicts the
    parent's: its weights would not fit, or would hear other features."""
    mine, theirs = to_dict(cfg.recognizer()), to_dict(parent.recognizer)
    given = given_settings(cfg, given)
    clash = [k for k in mine if k in given and k not in FREE and mine[k] != theirs[k]]
    if clash:
        listed = ", ".join(f"--{k} {cli_value(mine[k])} (the parent's: {cli_value(theirs[k])})" for k in clash)
        raise ConfigError(f"--init_from {parent.reference}: {listed}: a fine-tuned model keeps its parent's features "
                          f"and shape; leave these out (--{', --'.join(FREE)} may change)")
    taken = from_dict(RecognizerConfig, {k: mine[k] if k in given else theirs[k] for k in mine})
    return dataclasses.replace(cfg, features=taken.features, model=taken.model)


def prepare(model: SpeechModel, cfg: TrainConfig, parent: Parent | None, vocab: Sequence[str],
            say: Callable[[str], None]) -> None:
    """The model a run trains, before its optimizer is built: the parent's weights (none given: as initialized, or
    a resumed run's, loaded later), the blocks --freeze names fixed. Raises ConfigError for a frozen output layer
    that had to be re-initialized."""
    if parent is not None:
        say(f"init_from: {parent.name} (checkpoint sha256 {parent.sha256[:12]}): its weights, features and model "
            "shape; a new optimizer and schedule")
        if start_from(model, parent, vocab, say) and "classifier" in cfg.finetune.freeze:
            raise ConfigError("--freeze classifier: the output layer was re-initialized for this run's classes, so "
                              "it cannot stay as the parent had it; leave classifier out of --freeze")
    freeze(model, cfg.finetune.freeze)


def output_layer(model: SpeechModel) -> set[str]:
    """State-dict keys of the model's last layer, whose rows are its output classes."""
    last = f"classifier.{len(model.classifier) - 1}"
    return {f"{last}.{name}" for name, _ in model.classifier[-1].named_parameters()}


def start_from(model: SpeechModel, parent: Parent, vocab: Sequence[str], say: Callable[[str], None]) -> bool:
    """Loads the parent's weights into `model`, except its output layer when that has another shape or its classes
    are another vocabulary than `vocab` (this run's): that layer keeps its fresh initialization, said in one line.
    Returns whether it did. Raises CheckpointError when any other weight does not fit."""
    out, own = output_layer(model), model.state_dict()
    misfits = sorted(k for k in own.keys() - out if k not in parent.weights or parent.weights[k].shape != own[k].shape)
    misfits += sorted(parent.weights.keys() - own.keys())
    if misfits:
        raise ckpt.CheckpointError(f"--init_from {parent.reference}: its weights do not fit this model ("
                                   f"{', '.join(misfits[:5])}{', ...' if len(misfits) > 5 else ''})")
    shapes = {k: tuple(parent.weights[k].shape) if k in parent.weights else None for k in sorted(out)}
    reinit = tuple(parent.vocab) != tuple(vocab) or any(shapes[k] != tuple(own[k].shape) for k in out)
    model.load_state_dict({k: v for k, v in parent.weights.items() if not (reinit and k in out)}, strict=not reinit)
    if reinit:
        classes = next((s[0] for s in shapes.values() if s), 0)
        why = f"the parent's {classes} output classes are other symbols than this run's" if classes == len(vocab) \
            else f"the parent has {classes} output classes, this run {len(vocab)}"
        say(f"init_from: output layer re-initialized ({why}); every other layer starts from the parent's weights")
    return reinit


def freeze(model: nn.Module, blocks: Sequence[str]) -> None:
    """Keeps the named blocks' weights fixed: no gradient (requires_grad False), so they stay out of the optimizer
    (see asr.training.loop.build_trainer) and weight decay never touches them. Raises ConfigError for a block the
    model does not have (the look-ahead of a bidirectional model) or when nothing would be left to train."""
    for name in blocks:
        block = getattr(model, name)
        if block is None:
            raise ConfigError(f"--freeze {name}: the model has no such layer (only streaming models have a "
                              "look-ahead)")
        for p in block.parameters():
            p.requires_grad_(False)
    if not trainable(model):
        raise ConfigError(f"--freeze {','.join(blocks)} names every block of this model: nothing would train")


def trainable(model: nn.Module) -> int:
    """Parameters the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
