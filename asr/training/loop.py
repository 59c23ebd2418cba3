"""The training loop's units: the CTC loss of a batch, one optimizer step, one epoch, and validation on a split.

`asr train` runs them through `asr.training.train.train`, and `asr bench train` times the same units. The split
follows icefall's recipes (compute_loss / train_one_epoch / compute_validation_loss), with a typed Trainer in place
of their untyped parameter dict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torchaudio
from torch import nn

from asr.batching import plan_batches
from asr.data.dataset import SpeechDataset, collate
from asr.data.progress import progress_bar
from asr.decoding import greedy_decode
from asr.metrics import cer, wer
from asr.model import SpeechModel, ctc_loss_sum
from asr.precision import autocast
from asr.settings import TrainConfig
from asr.training import distributed as dist
from asr.training.batches import TrainData, epoch_batches, max_batch_frames, train_loader
from asr.training.state import Progress


@dataclass
class Trainer:
    """What a training step touches, built once per run."""
    cfg: TrainConfig
    ctx: dist.Context
    model: SpeechModel
    ddp: nn.Module                   # the model, wrapped in DistributedDataParallel when there are several ranks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    specaug: nn.Module
    amp: torch.dtype | None          # autocast dtype, None for fp32

    def distribute(self) -> None:
        """Wraps the model in DistributedDataParallel when there are several ranks (after any state is restored:
        DDP broadcasts rank 0's weights as it is built)."""
        if self.ctx.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model)


def spec_augment(cfg: TrainConfig) -> nn.Module:
    masks: list[nn.Module] = []
    if cfg.augment.freq_mask:
        masks.append(torchaudio.transforms.FrequencyMasking(cfg.augment.freq_mask, iid_masks=True))
    if cfg.augment.time_mask:
        masks += [torchaudio.transforms.TimeMasking(cfg.augment.time_mask, iid_masks=True) for _ in range(2)]
    return nn.Sequential(*masks)


def one_cycle(optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int):
    """Warm up over 20% of the steps, then anneal. (Warm-up of at least a step and a half: OneCycleLR divides by
    zero on very short runs otherwise.)"""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total_steps,
                                               pct_start=min(0.9, max(0.2, 1.5 / total_steps)))


def build_trainer(cfg: TrainConfig, ctx: dist.Context, model: SpeechModel, amp: torch.dtype | None,
                  total_steps: int) -> Trainer:
    """AdamW over the parameters that require a gradient (not those --freeze fixes) with a one-cycle schedule over
    `total_steps`, a loss scaler (active for fp16 only) and SpecAugment; `Trainer.distribute()` then wraps the model
    for several ranks."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.learning_rate,
                                  weight_decay=cfg.optim.weight_decay)
    return Trainer(cfg, ctx, model, model, optimizer, one_cycle(optimizer, cfg.optim.learning_rate, total_steps),
                   torch.amp.GradScaler(ctx.device.type, enabled=amp == torch.float16), spec_augment(cfg), amp)


def compute_loss(model: nn.Module, batch: dict[str, torch.Tensor], amp: torch.dtype | None, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed CTC loss as in ctc_loss_sum, log-probs (batch, frames, classes), output lengths) of one batch."""
    with autocast(device, amp):
        log_probs, out_lengths = model(batch["features"].to(device, non_blocking=True),
                                       batch["feature_lengths"].to(device))
    return ctc_loss_sum(log_probs, out_lengths, batch, device), log_probs, out_lengths


def forward_backward(model: nn.Module, batch: dict[str, torch.Tensor], specaug: nn.Module, amp: torch.dtype | None,
                     device: torch.device, scaler: torch.amp.GradScaler, weight: float) -> float:
    """Back-propagates one batch's CTC loss times `weight` (gradients add up over accumulated batches and, under
    DDP, average over ranks); returns the weighted loss."""
    if len(specaug):
        batch = {**batch, "features": specaug(batch["features"].unsqueeze(1)).squeeze(1)}
    loss = compute_loss(model, batch, amp, device)[0] * weight
    scaler.scale(loss).backward()
    return loss.item()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                   grad_clip: float, loss: float) -> bool:
    """Clips and steps, or skips the update when the loss or the gradient norm is not finite (one bad batch must
    not poison the weights). Returns whether the weights were updated."""
    scaler.unscale_(optimizer)
    norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    ok = math.isfinite(norm.item()) and math.isfinite(loss)
    if ok:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return ok


@dataclass
class EpochStats:
    """What an epoch (or the part of it trained so far) went through, for throughput figures."""
    batches: int = 0
    steps: int = 0
    utterances: int = 0
    audio_frames: int = 0            # feature frames of real audio
    padded_frames: int = 0           # feature frames computed, padding included
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("load", "forward+backward", "optimizer"), 0.0))

    def count(self, batch: dict[str, torch.Tensor]) -> None:
        """Adds one batch (this rank's share of it)."""
        self.batches += 1
        self.utterances += batch["features"].shape[0]
        self.audio_frames += int(batch["feature_lengths"].sum())
        self.padded_frames += batch["features"].shape[0] * batch["features"].shape[-1]

    def reset(self) -> None:
        """Back to zero: a benchmark leaves its warm-up steps out of what it measures."""
        self.__dict__.update(EpochStats().__dict__)

    def add(self, other: EpochStats) -> None:
        for name in ("batches", "steps", "utterances", "audio_frames", "padded_frames"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, seconds in other.seconds.items():
            self.seconds[key] += seconds


def train_one_epoch(t: Trainer, data: TrainData, pos: Progress, after_step: Callable[[float, EpochStats], bool],
                    progress: bool = False) -> EpochStats:
    """Trains on epoch `pos.epoch` from its batch `pos.batch` on, updating `pos` as it goes. After every optimizer
    step, `after_step(mean loss, stats so far)` runs on every rank (logging, checkpoints, stop requests); the epoch
    ends early when it returns True."""
    cfg, ctx, stats = t.cfg, t.ctx, EpochStats()
    t.model.train()
    data.train_set.epoch = pos.epoch
    batches = epoch_batches(cfg, data.train_lengths, data.items, pos.epoch, ctx.world)
    loaded = iter(train_loader(data.train_set, [dist.shard(b, ctx) for b in batches[pos.batch:]], data.loader_workers,
                               ctx.device))
    bar = progress_bar(total=len(batches) - pos.batch, desc=f"epoch {pos.epoch + 1}/{cfg.optim.epoch}", unit="batch",
                       enabled=progress, leave=False)
    loss_sum = 0.0
    for k in range(pos.batch, len(batches)):
        group_start = k - k % cfg.optim.accumulate
        group = min(cfg.optim.accumulate, len(batches) - group_start)  # batches accumulated into this optimizer step
        last_of_group = k == group_start + group - 1
        started = time.perf_counter()
        batch = next(loaded)
        loaded_at = time.perf_counter()
        # Each utterance weighs 1 / (utterances in the step's batches): the step follows the mean loss however the
        # batches are accumulated; the world factor undoes DDP's averaging of gradients over ranks.
        weight = ctx.world / (len(batches[k]) * group)
        with nullcontext() if last_of_group or ctx.world == 1 else t.ddp.no_sync():
            loss_sum += forward_backward(t.ddp, batch, t.specaug, t.amp, ctx.device, t.scaler, weight) / ctx.world
        stats.seconds["load"] += loaded_at - started
        stats.seconds["forward+backward"] += time.perf_counter() - loaded_at
        stats.count(batch)
        pos.batch = k + 1
        bar.update()
        if not last_of_group:
            continue
        stepped_at = time.perf_counter()
        mean_loss, loss_sum = dist.all_sum([loss_sum], ctx)[0], 0.0
        if not optimizer_step(t.model, t.optimizer, t.scheduler, t.scaler, cfg.optim.grad_clip, mean_loss):
            pos.skipped_steps += 1
        pos.step, stats.steps = pos.step + 1, stats.steps + 1
        stats.seconds["optimizer"] += time.perf_counter() - stepped_at
        bar.set_postfix(loss=f"{mean_loss:.3f}")
        if after_step(mean_loss, stats):
            break
    bar.close()
    return stats


@torch.no_grad()
def compute_validation(model: nn.Module, dataset: SpeechDataset, lengths: list[int], cfg: TrainConfig,
                       amp: torch.dtype | None, ctx: dist.Context
                       ) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Loss and corpus-level WER/CER of greedy decoding on a split (each rank scores its share), plus (id, reference,
    prediction) rows sorted by id."""
    model.eval()
    total_loss, rows = 0.0, []
    for idx in plan_batches(lengths, range(len(dataset)), max_items=cfg.optim.batch, seed=None,
                            max_frames=max_batch_frames(cfg)):
        idx = dist.shard(idx, ctx)
        if not idx:
            continue
        loss, log_probs, out_lengths = compute_loss(model, collate([dataset[i] for i in idx]), amp, ctx.device)
        total_loss += loss.item()
        for i, hyp in zip(idx, greedy_decode(log_probs, out_lengths, dataset.text.vocabulary), strict=True):
            u = dataset.utterances[i]
            rows.append((u.file_id, dataset.text.normalized(u.transcript), hyp))
    rows = sorted(r for part in dist.gather(rows, ctx) for r in part)
    total_loss = dist.all_sum([total_loss], ctx)[0]
    refs, hyps = [r[1] for r in rows], [r[2] for r in rows]
    return {"loss": total_loss / len(dataset), "wer": wer(refs, hyps), "cer": cer(refs, hyps)}, rows
