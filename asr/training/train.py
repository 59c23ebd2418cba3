"""Training: CTC + AdamW + one-cycle LR, validated every epoch, then logged, registered and promoted in MLflow.

Resumable (`last.pt` every few steps and every epoch holds everything needed to continue bit-for-bit),
interruptible (SIGINT/SIGTERM finish the step, checkpoint and mark the run KILLED) and data-parallel
under `torchrun` (see asr/training/distributed.py).
"""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import torchaudio
from torch import nn
from tqdm import tqdm

from asr import UserError
from asr import checkpoint as ckpt
from asr.config import TrainConfig, from_dict, save, to_dict
from asr.data.augment import WaveAugment
from asr.data.dataset import SpeechDataset, collate, plan_batches, read_split, single_threaded_worker
from asr.decoding import greedy_decode
from asr.features import FeatureExtractor
from asr.metrics import cer, wer
from asr.model import SpeechModel
from asr.precision import autocast, autocast_dtype
from asr.text import BLANK, VOCAB, normalized
from asr.tracking import registry, store
from asr.tracking.metric_log import MetricLog
from asr.tracking.packaging import log_model
from asr.training import distributed as dist


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: the run was checkpointed and can be resumed."""


@dataclass
class TrainResult:
    run_id: str
    dev: dict[str, float]
    test: dict[str, float]
    promotion: registry.Promotion | None  # None on the non-main ranks of a distributed run


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


def load_dataset(dirs: str, features: FeatureExtractor, limit: int = 0, seed: int = 0,
                 augment: WaveAugment | None = None) -> SpeechDataset:
    utterances = [u for d in dirs.split(",") if d.strip() for u in read_split(d.strip())]
    if limit and limit < len(utterances):
        utterances = sorted(random.Random(seed).sample(utterances, limit), key=lambda u: u.file_id)
    return SpeechDataset(utterances, features, augment, seed)


def wave_augment(cfg: TrainConfig) -> WaveAugment:
    return WaveAugment(gain_db=cfg.gain_db, noise_snr_db=cfg.noise_snr_db, shift_ms=cfg.shift_ms,
                       speed=cfg.speed_perturb, sample_rate=cfg.sample_rate)


def spec_augment(cfg: TrainConfig) -> nn.Module:
    masks: list[nn.Module] = []
    if cfg.freq_mask:
        masks.append(torchaudio.transforms.FrequencyMasking(cfg.freq_mask, iid_masks=True))
    if cfg.time_mask:
        masks += [torchaudio.transforms.TimeMasking(cfg.time_mask, iid_masks=True) for _ in range(2)]
    return nn.Sequential(*masks)


def ctc_min_frames(labels: list[int]) -> int:
    """CTC needs a frame per label plus a blank between repeated labels."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:], strict=False))


def trainable_items(dataset: SpeechDataset, lengths: list[int], model: SpeechModel, cfg: TrainConfig
                    ) -> tuple[list[int], dict[str, int]]:
    """Indices worth training on, and counts of those skipped: audio that cannot be used (already left out by
    `precompute`), an empty transcript (an id alone on its line, or nothing but digits and symbols: it would teach
    the model to say nothing over speech), too long for memory, or too short for their transcript under CTC (they
    could only ever produce an infinite loss)."""
    max_frames = cfg.max_seconds * 1000 / cfg.hop_ms
    out = model.output_lengths(torch.tensor(lengths)).tolist()
    items, skipped = [], {"skipped_unreadable": len(dataset.unreadable), "skipped_empty_transcript": 0,
                          "skipped_too_long": 0, "skipped_too_short": 0}
    for i, (frames, out_frames) in enumerate(zip(lengths, out, strict=True)):
        if not dataset.labels[i]:
            skipped["skipped_empty_transcript"] += 1
        elif frames > max_frames:
            skipped["skipped_too_long"] += 1
        elif out_frames < ctc_min_frames(dataset.labels[i]):
            skipped["skipped_too_short"] += 1
        else:
            items.append(i)
    return items, skipped


def max_batch_frames(cfg: TrainConfig) -> int:
    return int(cfg.max_batch_seconds * 1000 / cfg.hop_ms)


def epoch_batches(cfg: TrainConfig, lengths: list[int], items: list[int], epoch: int, world: int) -> list[list[int]]:
    """The epoch's global batches. SortaGrad (Deep Speech 2): epoch 1 runs shortest-first, which gets CTC off its
    blank plateau sooner; later epochs are shuffled. Batches too small to give every rank an item are dropped."""
    batches = plan_batches(lengths, items, max_items=cfg.batch, max_frames=max_batch_frames(cfg),
                           seed=None if epoch == 0 else cfg.seed + epoch)
    return [b for b in batches if len(b) >= world]


def steps_in(n_batches: int, accumulate: int) -> int:
    return math.ceil(n_batches / accumulate)


def one_cycle(optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int):
    """Warm up over 20% of the steps, then anneal. (Warm-up of at least a step and a half: OneCycleLR divides by
    zero on very short runs otherwise.)"""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total_steps,
                                               pct_start=min(0.9, max(0.2, 1.5 / total_steps)))


def ctc_loss_sum(log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: dict[str, torch.Tensor],
                 device: torch.device) -> torch.Tensor:
    """Sum over the batch of each utterance's CTC loss per target label, in fp32. Dividing the sum by the
    *global* batch size (not this rank's share) makes data-parallel gradients equal single-process ones."""
    losses = nn.functional.ctc_loss(log_probs.float().transpose(0, 1), batch["labels"].to(device), out_lengths,
                                    batch["label_lengths"].to(device), blank=BLANK, reduction="none",
                                    zero_infinity=True)
    return (losses / batch["label_lengths"].to(device).clamp(min=1)).sum()


def train_loader(dataset: SpeechDataset, batches: list[list[int]], workers: int, device: torch.device
                 ) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        worker_init_fn=single_threaded_worker, pin_memory=device.type == "cuda",
        generator=torch.Generator())  # its own generator: creating the loader must not advance the global RNG


def forward_backward(model: nn.Module, batch: dict[str, torch.Tensor], specaug: nn.Module, amp: torch.dtype | None,
                     device: torch.device, scaler: torch.amp.GradScaler, weight: float) -> float:
    """Back-propagates one batch's CTC loss times `weight` (gradients add up over accumulated batches and, under
    DDP, average over ranks); returns the weighted loss."""
    feats = batch["features"]
    if len(specaug):
        feats = specaug(feats.unsqueeze(1)).squeeze(1)
    with autocast(device, amp):
        log_probs, out_lengths = model(feats.to(device, non_blocking=True), batch["feature_lengths"].to(device))
    loss = ctc_loss_sum(log_probs, out_lengths, batch, device) * weight
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


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SpeechDataset, lengths: list[int], cfg: TrainConfig,
             amp: torch.dtype | None, ctx: dist.Context) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Loss and corpus-level WER/CER on a split (each rank scores its share), plus (id, reference, prediction)."""
    model.eval()
    total_loss, rows = 0.0, []
    for idx in plan_batches(lengths, range(len(dataset)), max_items=cfg.batch, seed=None,
                            max_frames=max_batch_frames(cfg)):
        idx = dist.shard(idx, ctx)
        if not idx:
            continue
        batch = collate([dataset[i] for i in idx])
        with autocast(ctx.device, amp):
            log_probs, out_lengths = model(batch["features"].to(ctx.device), batch["feature_lengths"].to(ctx.device))
        total_loss += ctc_loss_sum(log_probs, out_lengths, batch, ctx.device).item()
        for i, hyp in zip(idx, greedy_decode(log_probs, out_lengths), strict=True):
            u = dataset.utterances[i]
            rows.append((u.file_id, normalized(u.transcript), hyp))
    rows = sorted(r for part in dist.gather(rows, ctx) for r in part)
    total_loss = dist.all_sum([total_loss], ctx)[0]
    refs, hyps = [r[1] for r in rows], [r[2] for r in rows]
    return {"loss": total_loss / len(dataset), "wer": wer(refs, hyps), "cer": cer(refs, hyps)}, rows


def log_predictions(rows: list[tuple[str, str, str]], name: str) -> None:
    mlflow.log_table({"file_id": [r[0] for r in rows], "target": [r[1] for r in rows],
                      "prediction": [r[2] for r in rows]}, name)


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


def prep_workers(cfg: TrainConfig) -> int:
    """Up-front featurization has the machine to itself: one single-threaded process per core (up to 8)."""
    return 0 if cfg.workers == 0 else max(cfg.workers, min(8, os.cpu_count() or 1))


def intra_op_threads(cfg: TrainConfig, loader_workers: int) -> int:
    """On few cores, oversubscription is what kills throughput: busy loader workers each take a core."""
    if cfg.threads:
        return cfg.threads
    return max(1, torch.get_num_threads() - loader_workers)


def training_state(cfg: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, progress: Progress,
                   run_id: str) -> dict[str, Any]:
    return {**ckpt.model_state(cfg, model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "progress": to_dict(progress), "rng": ckpt.rng_states(), "run_id": run_id}


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    state = None
    if cfg.resume:
        resume_from = ckpt.find_resumable(cfg.resume, cfg.output_dir)
        state = ckpt.load_training_state(resume_from)
        cfg = from_dict(TrainConfig, {**state["config"], "resume": cfg.resume})  # the run's own settings
    ctx = dist.init()
    progress = progress and ctx.main
    say = print if ctx.main else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    amp = autocast_dtype(cfg.precision, ctx.device)
    if ctx.main:
        store.use_reachable_store(cfg.offline_ok)  # a server that does not answer: fail (or go local) in seconds
        store.setup(cfg.experiment)  # fail on a bad tracking store before any compute

    features = FeatureExtractor.from_config(cfg)
    augment = wave_augment(cfg)
    train_set = load_dataset(cfg.train_data, features, cfg.max_utterances, cfg.seed, augment)
    dev_set = load_dataset(cfg.dev_data, features)
    train_lengths = train_set.precompute(prep_workers(cfg), cfg.feature_cache, progress, "features train")
    dev_lengths = dev_set.precompute(prep_workers(cfg), cfg.feature_cache, progress, "features dev")
    for message in dict.fromkeys(train_set.unreadable + dev_set.unreadable):  # once per file, in order
        say(f"skipping {message}")
    loader_workers = cfg.workers if augment.enabled else 0  # cached features need no workers
    torch.set_num_threads(intra_op_threads(cfg, loader_workers))

    model = SpeechModel.from_config(cfg, len(VOCAB)).to(ctx.device)
    items, skipped = trainable_items(train_set, train_lengths, model, cfg)
    if not items:
        raise UserError(f"no usable training utterances in {cfg.train_data}: {skipped}")
    plans = [len(epoch_batches(cfg, train_lengths, items, e, ctx.world)) for e in range(cfg.epoch)]
    total_steps = sum(steps_in(n, cfg.accumulate) for n in plans)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = one_cycle(optimizer, cfg.learning_rate, total_steps)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp == torch.float16)
    pos = Progress()
    best_state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        pos = Progress(**{**state["progress"], "best": tuple(state["progress"]["best"])})
        if (resume_from.parent / ckpt.BEST).is_file():
            best_state = torch.load(resume_from.parent / ckpt.BEST, map_location="cpu", weights_only=True)["model"]
    ddp = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    specaug = spec_augment(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"train: {len(items)} utterances from {cfg.train_data} ({sum(skipped.values())} skipped: {skipped}); "
        f"dev: {len(dev_set)} from {cfg.dev_data}")
    say(f"model: {n_params / 1e6:.2f} M parameters; {ctx.device.type} x {ctx.world}, "
        f"{amp and str(amp).removeprefix('torch.') or 'fp32'}, {torch.get_num_threads()} threads; "
        f"{cfg.epoch} epochs, {total_steps} steps")

    run_id = ""
    if ctx.main:
        run = mlflow.start_run(run_id=state["run_id"]) if state else mlflow.start_run(run_name=cfg.run_name or None)
        run_id = run.info.run_id
    out_dir = resume_from.parent if state else Path(cfg.output_dir) / run_id
    metrics = MetricLog(run_id, out_dir)  # per-step and per-epoch metrics; outlive a server outage
    try:
        if ctx.main and state is None:
            params = {**to_dict(cfg), "parameters": n_params, "train_utterances": len(items)}
            logged = run.data.params  # `mlflow run` has already logged its entry point's (shell-quoted) parameters
            mlflow.log_params({k: v for k, v in params.items() if k not in logged})
            mlflow.log_metrics({k: float(v) for k, v in skipped.items()})
            out_dir.mkdir(parents=True, exist_ok=True)
            save(cfg, out_dir / "config.json")
            mlflow.log_artifact(str(out_dir / "config.json"))
            mlflow.log_dict({"vocab": list(VOCAB), "blank": BLANK}, "vocab.json")
        elif ctx.main:
            say(f"resuming run {run_id} from {resume_from}: epoch {pos.epoch + 1}, step {pos.step}")

        def checkpoint() -> Path:
            path = out_dir / ckpt.LAST
            if ctx.main:
                metrics.send_or_keep()  # before the checkpoint passes their steps: a kill -9 then loses none
                ckpt.atomic_save(training_state(cfg, model, optimizer, scheduler, scaler, pos, run_id), path)
            return path

        if state is not None:
            ckpt.restore_rng(state["rng"])  # after model init and everything else that drew from it
        with stop_requests() as stop:
            while pos.epoch < cfg.epoch:
                model.train()
                train_set.epoch = pos.epoch
                batches = epoch_batches(cfg, train_lengths, items, pos.epoch, ctx.world)
                loader = train_loader(train_set, [dist.shard(b, ctx) for b in batches[pos.batch:]], loader_workers,
                                      ctx.device)
                started, audio_frames, first_batch = time.time(), 0, pos.batch
                bar = tqdm(total=len(batches) - pos.batch, desc=f"epoch {pos.epoch + 1}/{cfg.epoch}", unit="batch",
                           disable=not progress, leave=False)
                loss_sum, loaded = 0.0, iter(loader)
                for k in range(pos.batch, len(batches)):
                    group_start = k - k % cfg.accumulate
                    group = min(cfg.accumulate, len(batches) - group_start)
                    last_of_group = k == group_start + group - 1
                    batch = next(loaded)
                    with nullcontext() if last_of_group or ctx.world == 1 else ddp.no_sync():
                        loss_sum += forward_backward(ddp, batch, specaug, amp, ctx.device, scaler,
                                                     weight=ctx.world / (len(batches[k]) * group)) / ctx.world
                    audio_frames += int(batch["feature_lengths"].sum())
                    pos.batch = k + 1
                    bar.update()
                    if not last_of_group:
                        continue
                    mean_loss = dist.all_sum([loss_sum], ctx)[0]
                    if not optimizer_step(model, optimizer, scheduler, scaler, cfg.grad_clip, mean_loss):
                        pos.skipped_steps += 1
                    pos.step += 1
                    if ctx.main:
                        metrics.log({"loss": mean_loss, "learning_rate": scheduler.get_last_lr()[0],
                                     "skipped_steps": pos.skipped_steps}, pos.step)
                    bar.set_postfix(loss=f"{mean_loss:.3f}")
                    loss_sum = 0.0
                    if dist.any_rank(bool(stop), ctx):
                        raise TrainingInterrupted(interrupted(stop, pos, checkpoint(), out_dir))
                    if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                        checkpoint()
                bar.close()
                elapsed = time.time() - started
                audio_seconds = dist.all_sum([audio_frames * cfg.hop_ms / 1000], ctx)[0]

                dev, _ = evaluate(model, dev_set, dev_lengths, cfg, amp, ctx)
                improved = (dev["wer"], dev["cer"]) < pos.best  # CER breaks ties while WER is still stuck at 1.0
                if improved:
                    pos.best, pos.best_epoch, pos.bad_epochs = (dev["wer"], dev["cer"]), pos.epoch + 1, 0
                    best_state = copy.deepcopy(model.state_dict())
                    if ctx.main:
                        ckpt.atomic_save(ckpt.model_state(cfg, model), out_dir / ckpt.BEST)
                else:
                    pos.bad_epochs += 1
                if ctx.main:
                    metrics.log({"val_loss": dev["loss"], "wer": dev["wer"], "cer": dev["cer"],
                                 "audio_seconds_per_second": audio_seconds / elapsed}, pos.epoch + 1)
                say(f"epoch {pos.epoch + 1}/{cfg.epoch}: val_loss {dev['loss']:.3f}  WER {dev['wer']:.3f}  "
                    f"CER {dev['cer']:.3f}  ({elapsed:.0f} s, {audio_seconds / elapsed:.0f} audio-s/s over "
                    f"{len(batches) - first_batch} batches){'  *' if improved else ''}")
                pos.epoch, pos.batch = pos.epoch + 1, 0
                stop_early = cfg.patience and pos.bad_epochs >= cfg.patience
                if stop_early:
                    say(f"early stop: no better dev WER/CER for {cfg.patience} epochs (best: epoch {pos.best_epoch})")
                    pos.epoch = cfg.epoch
                checkpoint()
                if dist.any_rank(bool(stop), ctx):
                    raise TrainingInterrupted(interrupted(stop, pos, out_dir / ckpt.LAST, out_dir))

        if ctx.main:
            metrics.close()
        result = finish(cfg, model, best_state, pos, dev_set, features, amp, ctx, run_id, out_dir, progress)
        if ctx.main:
            pos.registered = result.promotion.version
            mlflow.end_run()  # before the checkpoint that makes the run unresumable: a kill between the two then
            checkpoint()      # leaves a resumable run that re-finishes (same version), not one RUNNING forever
        dist.barrier(ctx)  # ranks tear the process group down together, once rank 0 has registered the model
        return result
    except TrainingInterrupted:
        if ctx.main:
            metrics.send_or_keep()
            store.end_run("KILLED")
        raise
    except BaseException:
        if ctx.main:
            metrics.send_or_keep()  # the curves up to the failure
            store.end_run("FAILED")
        raise
    finally:
        ddp = None  # DDP's reducer holds the process group: release it, so shutdown destroys the group now, not
        dist.shutdown()  # in some later garbage collection (gloo threads torn down then can abort the process)


def kill_point(name: str) -> None:
    """Fault injection for the reliability tests: with ASR_KILL_AT=name the process SIGKILLs itself here, as a
    `kill -9` landing at exactly this moment would (a kill from outside can miss a window this short)."""
    if os.environ.get("ASR_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def interrupted(stop: list[int], pos: Progress, path: Path, out_dir: Path) -> str:
    name = signal.Signals(stop[0]).name if stop else "another rank"
    return (f"stopped by {name} at step {pos.step} (epoch {pos.epoch + 1}); training state saved to {path}. "
            f"Resume with: asr train --resume {out_dir}")


def finish(cfg: TrainConfig, model: SpeechModel, best_state: dict | None, pos: Progress, dev_set: SpeechDataset,
           features: FeatureExtractor, amp: torch.dtype | None, ctx: dist.Context, run_id: str, out_dir: Path,
           progress: bool) -> TrainResult:
    """Scores the best epoch's weights on dev and test, then logs, registers and promotes them."""
    if best_state is not None:
        model.load_state_dict(best_state)
    dev, dev_rows = evaluate(model, dev_set, dev_set.precompute(), cfg, amp, ctx)
    test: dict[str, float] = {}
    if cfg.test_data:
        test_set = load_dataset(cfg.test_data, features)
        test, test_rows = evaluate(model, test_set, test_set.precompute(prep_workers(cfg), cfg.feature_cache, progress,
                                                                        "features test"), cfg, amp, ctx)
        for message in test_set.unreadable if ctx.main else ():
            print(f"skipping {message}")
    if not ctx.main:
        return TrainResult(run_id, dev, test, None)
    mlflow.log_metrics({"best_wer": dev["wer"], "best_cer": dev["cer"], "best_epoch": pos.best_epoch})
    log_predictions(dev_rows, "predictions_dev.json")
    if test:
        mlflow.log_metrics({"test_loss": test["loss"], "test_wer": test["wer"], "test_cer": test["cer"]})
        log_predictions(test_rows, "predictions_test.json")
        print(f"held-out test ({cfg.test_data}): WER {test['wer']:.3f}  CER {test['cer']:.3f}")
    checkpoint = ckpt.atomic_save(ckpt.model_state(cfg, model), out_dir / ckpt.MODEL)
    uri = log_model(checkpoint, dev_set.utterances[0].path)
    promotion = registry.register_and_promote(uri, cfg.registered_model, run_id, dev["wer"], cfg.promote)
    kill_point("registered")
    mlflow.set_tags({"registered_model": cfg.registered_model, "model_version": promotion.version,
                     "promoted": str(promotion.promoted)})
    print(f"{cfg.registered_model} {promotion.describe()}")
    return TrainResult(run_id, dev, test, promotion)
