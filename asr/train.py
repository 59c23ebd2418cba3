"""Training: CTC + AdamW + one-cycle LR, validated every epoch, then logged, registered and promoted in MLflow."""

from __future__ import annotations

import copy
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
import torchaudio
from torch import nn
from tqdm import tqdm

from asr import tracking
from asr.checkpoint import save_checkpoint
from asr.config import TrainConfig, save, to_dict
from asr.data import SpeechDataset, collate, length_sorted_batches, read_split
from asr.decoding import greedy_decode
from asr.features import FeatureExtractor
from asr.metrics import cer, wer
from asr.model import SpeechModel
from asr.text import BLANK, VOCAB, normalize


@dataclass
class TrainResult:
    run_id: str
    dev: dict[str, float]
    test: dict[str, float]
    promotion: tracking.Promotion


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware does it natively (AVX-512 BF16 / AMX CPUs, Ampere+ GPUs); None = fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else None


def load_dataset(dirs: str, features: FeatureExtractor, limit: int = 0, seed: int = 0) -> SpeechDataset:
    utterances = [u for d in dirs.split(",") if d.strip() for u in read_split(d.strip())]
    if limit and limit < len(utterances):
        utterances = sorted(random.Random(seed).sample(utterances, limit), key=lambda u: u.file_id)
    return SpeechDataset(utterances, features)


def featurize(dataset: SpeechDataset, name: str, progress: bool) -> list[int]:
    """Computes (and caches) every item's features up front; returns frame counts for batching."""
    return [dataset.frames(i) for i in tqdm(range(len(dataset)), desc=f"features {name}", unit="utt",
                                               disable=not progress, leave=False)]


def spec_augment(cfg: TrainConfig) -> nn.Module:
    masks: list[nn.Module] = []
    if cfg.freq_mask:
        masks.append(torchaudio.transforms.FrequencyMasking(cfg.freq_mask, iid_masks=True))
    if cfg.time_mask:
        masks += [torchaudio.transforms.TimeMasking(cfg.time_mask, iid_masks=True) for _ in range(2)]
    return nn.Sequential(*masks)


@torch.no_grad()
def evaluate(model: SpeechModel, dataset: SpeechDataset, lengths: list[int], batch_size: int,
             amp: torch.dtype | None, device: torch.device) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Loss and corpus-level WER/CER on a split, plus (file id, reference, prediction) rows."""
    model.eval()
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True, reduction="sum")
    total_loss, rows = 0.0, []
    for idx in length_sorted_batches(lengths, batch_size, seed=None):
        batch = collate([dataset[i] for i in idx])
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            log_probs, out_lengths = model(batch["features"].to(device), batch["feature_lengths"].to(device))
        total_loss += ctc(log_probs.transpose(0, 1), batch["labels"].to(device), out_lengths,
                          batch["label_lengths"].to(device)).item()
        for i, hyp in zip(idx, greedy_decode(log_probs, out_lengths), strict=True):
            u = dataset.utterances[i]
            rows.append((u.file_id, normalize(u.transcript)[0], hyp))
    refs, hyps = [r[1] for r in rows], [r[2] for r in rows]
    return {"loss": total_loss / len(dataset), "wer": wer(refs, hyps), "cer": cer(refs, hyps)}, rows


def log_predictions(rows: list[tuple[str, str, str]], name: str) -> None:
    mlflow.log_table({"file_id": [r[0] for r in rows], "target": [r[1] for r in rows],
                      "prediction": [r[2] for r in rows]}, name)


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = autocast_dtype(cfg.precision, device)
    tracking.setup(cfg.experiment)  # fail on a bad tracking store before any compute

    features = FeatureExtractor.from_config(cfg)
    train_set = load_dataset(cfg.train_data, features, cfg.max_utterances, cfg.seed)
    dev_set = load_dataset(cfg.dev_data, features)
    train_lengths = featurize(train_set, "train", progress)
    dev_lengths = featurize(dev_set, "dev", progress)
    print(f"train: {len(train_set)} utterances from {cfg.train_data}; dev: {len(dev_set)} from {cfg.dev_data}")

    model = SpeechModel.from_config(cfg, len(VOCAB)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                                    total_steps=cfg.epoch * steps_per_epoch, pct_start=0.2)
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    augment = spec_augment(cfg)
    print(f"model: {n_params / 1e6:.2f} M parameters; {device.type}, {'bf16' if amp else 'fp32'}; "
          f"{cfg.epoch} epochs x {steps_per_epoch} steps")

    with mlflow.start_run(run_name=cfg.run_name or None) as run:
        params = {**to_dict(cfg), "parameters": n_params, "train_utterances": len(train_set)}
        logged = run.data.params  # `mlflow run` has already logged its entry point's (shell-quoted) parameters
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        out_dir = Path(cfg.output_dir) / run.info.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        save(cfg, out_dir / "config.json")
        mlflow.log_artifact(str(out_dir / "config.json"))
        mlflow.log_dict({"vocab": list(VOCAB), "blank": BLANK}, "vocab.json")

        best, best_state, best_rows, step = (math.inf, math.inf), None, [], 0
        for epoch in range(cfg.epoch):
            model.train()
            started = time.time()
            # SortaGrad (Deep Speech 2): shortest utterances first in epoch 1 gets CTC off its blank plateau sooner.
            batches = length_sorted_batches(train_lengths, cfg.batch, seed=cfg.seed + epoch if epoch else None)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epoch}", unit="batch", disable=not progress,
                       leave=False)
            for idx in bar:
                batch = collate([train_set[i] for i in idx])
                feats = augment(batch["features"].unsqueeze(1)).squeeze(1) if len(augment) else batch["features"]
                with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                    log_probs, out_lengths = model(feats.to(device), batch["feature_lengths"].to(device))
                loss = ctc(log_probs.float().transpose(0, 1), batch["labels"].to(device), out_lengths,
                           batch["label_lengths"].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                mlflow.log_metrics({"loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0]},
                                   step=step, synchronous=False)
                bar.set_postfix(loss=f"{loss.item():.3f}")

            dev, rows = evaluate(model, dev_set, dev_lengths, cfg.batch, amp, device)
            mlflow.log_metrics({"val_loss": dev["loss"], "wer": dev["wer"], "cer": dev["cer"]}, step=epoch + 1)
            print(f"epoch {epoch + 1}/{cfg.epoch}: loss {loss.item():.3f}  val_loss {dev['loss']:.3f}  "
                  f"WER {dev['wer']:.3f}  CER {dev['cer']:.3f}  ({time.time() - started:.0f} s)")
            if (dev["wer"], dev["cer"]) < best:  # CER breaks ties while WER is still stuck at 1.0
                best, best_dev, best_rows = (dev["wer"], dev["cer"]), dev, rows
                best_state = copy.deepcopy(model.state_dict())

        model.load_state_dict(best_state)
        mlflow.log_metrics({"best_wer": best_dev["wer"], "best_cer": best_dev["cer"]})
        log_predictions(best_rows, "predictions_dev.json")
        test: dict[str, float] = {}
        if cfg.test_data:
            test_set = load_dataset(cfg.test_data, features)
            test, test_rows = evaluate(model, test_set, featurize(test_set, "test", progress), cfg.batch, amp,
                                       device)
            mlflow.log_metrics({"test_loss": test["loss"], "test_wer": test["wer"], "test_cer": test["cer"]})
            log_predictions(test_rows, "predictions_test.json")
            print(f"held-out test ({cfg.test_data}): WER {test['wer']:.3f}  CER {test['cer']:.3f}")

        checkpoint = save_checkpoint(out_dir / "model.pt", cfg, model.cpu())
        uri = tracking.log_model(checkpoint, dev_set.utterances[0].path)
        promotion = tracking.register_and_promote(uri, cfg.registered_model, run.info.run_id, best_dev["wer"],
                                                  cfg.promote)
        mlflow.set_tags({"registered_model": cfg.registered_model, "model_version": promotion.version,
                         "promoted": str(promotion.promoted)})
        print(f"{cfg.registered_model} {promotion.describe()}")
    return TrainResult(run.info.run_id, best_dev, test, promotion)
