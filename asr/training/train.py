"""Training: CTC + AdamW + one-cycle LR, validated every epoch, then logged, registered and promoted in MLflow.

Resumable (`last.pt` every few steps and every epoch holds everything needed to continue bit-for-bit),
interruptible (SIGINT/SIGTERM finish the step, checkpoint and mark the run KILLED) and data-parallel
under `torchrun` (see asr/training/distributed.py). The loop's units are in asr/training/loop.py.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from asr import UserError
from asr import checkpoint as ckpt
from asr.config import ModelConfig, check_paths, save, to_params
from asr.data.dataset import Utterance, split_digest
from asr.hardware import cpu_name
from asr.model import SpeechModel
from asr.precision import Decision, asked_dtype, decide
from asr.settings import TrainConfig
from asr.text import TextCounts
from asr.tracking import lineage, model_card, registry, store
from asr.tracking.metric_log import MetricLog
from asr.tracking.packaging import log_model
from asr.tracking.system_metrics import SystemMetrics
from asr.training import decoder as model_decoder
from asr.training import distributed as dist
from asr.training import finetune, normalization
from asr.training.batches import (
    TrainData,
    featurize_split,
    fixed_vocabulary,
    intra_op_threads,
    load_dataset,
    run_text,
    total_steps,
    training_data,
)
from asr.training.loop import EpochStats, Trainer, build_trainer, compute_validation, train_one_epoch
from asr.training.state import (
    Progress,
    Resume,
    TrainingInterrupted,
    interrupted,
    kill_point,
    restore,
    resume_point,
    stop_requests,
    training_state,
)

# A split as a run used it: its folder(s), the utterances it used and their durations in seconds.
SplitUse = tuple[Sequence[str], list[Utterance], list[float]]


@dataclass
class TrainResult:
    run_id: str
    dev: dict[str, float]        # loss, WER and CER of greedy decoding, as every epoch is validated
    test: dict[str, float]
    promotion: registry.Promotion | None  # None on the non-main ranks of a distributed run
    decoding: model_decoder.Decoding | None = None  # the model's own decoder and its scores (main rank)


@dataclass
class Run:
    """One training run on this rank, once set up: what it trains, where it stands, where it writes."""
    trainer: Trainer
    data: TrainData
    pos: Progress
    run_id: str                  # the MLflow run ("" on the non-main ranks)
    out_dir: Path                # OUTPUT_DIR/RUN_ID: last.pt, best.pt, model.pt
    metrics: MetricLog
    progress: bool               # progress bars
    best_state: dict | None = None  # weights of the best epoch so far
    system_metrics: SystemMetrics | None = None  # MLflow's system-metrics monitor (main rank, unless turned off)
    test_summary: str = ""       # the held-out split, as the run's description names it
    test_split: SplitUse | None = None  # the held-out split, once scored (main rank)
    started: float = 0.0         # time.monotonic() when this process began setting the run up
    earlier_seconds: float = 0.0  # wall time of the run's earlier parts (a resumed run), as last checkpointed
    precision: Decision = Decision(None, "asked")  # the autocast dtype the steps run in, and why
    parent: dict[str, str] = field(default_factory=dict)  # lineage tags of the model it was fine-tuned from (main)
    feature_stats: dict[str, int] = field(default_factory=dict)  # a streaming model's statistics: what they came from

    def say(self, message: str) -> None:
        if self.trainer.ctx.main:
            print(message)

    def wall_seconds(self) -> float:
        """Wall time of the whole run so far: this process's and its earlier parts' (a resumed run)."""
        return self.earlier_seconds + time.monotonic() - self.started

    def checkpoint(self) -> Path:
        """Writes the training state to last.pt (main rank) and returns its path. The metrics of the steps it
        passes are sent (or kept on disk) first, so a kill -9 right after it loses none of them."""
        path, t = self.out_dir / ckpt.LAST, self.trainer
        self.pos.seconds = self.wall_seconds()
        if t.ctx.main:
            self.metrics.send_or_keep()
            ckpt.atomic_save(training_state(t.cfg, t.model, t.optimizer, t.scheduler, t.scaler, self.pos,
                                            self.run_id, self.data.text.normalizer), path)
        return path

    def stop_system_metrics(self) -> None:
        """Before the run ends: MLflow's monitor publishes its last sample to a run that is still RUNNING."""
        if self.system_metrics is not None:
            self.system_metrics.stop()


def train(cfg: TrainConfig, progress: bool = True, given: Collection[str] | None = None) -> TrainResult:
    """Trains a model as `cfg` says (or continues the run --resume names, taking the settings of `given` that may
    change on a resume: see resume_point), then logs, registers and promotes the best epoch's weights. Raises
    UserError for settings, data or a tracking store that cannot work, before any compute; TrainingInterrupted on
    SIGINT/SIGTERM, after checkpointing."""
    cfg, resume = resume_point(cfg, given)
    check_paths(cfg)  # the data folders, before any store is touched or anything is read
    vocabulary = fixed_vocabulary(cfg.text) if resume is None else ckpt.checkpoint_text(resume.state).vocabulary
    model_decoder.check(cfg.decoder, vocabulary)  # the vocabulary, LM and lexicon to attach, likewise
    ctx = dist.init()
    torch.manual_seed(cfg.optim.seed)
    random.seed(cfg.optim.seed)
    if cfg.optim.precision != "auto":
        asked_dtype(cfg.optim.precision, ctx.device)  # fp16 on a CPU: fail before any store is touched
    if ctx.main:
        store.use_reachable_store(cfg.tracking.offline_ok)  # a server that does not answer: fail (or go local) now
        store.setup(cfg.tracking.experiment)  # fail on a bad tracking store before any compute
        if resume is not None:
            store.check_run(resume.state["run_id"])  # e.g. --offline_ok fell back to a store that lacks it
    elif cfg.finetune.init_from:
        store.setup_uri()  # every rank reads the parent: its shape is the model's on every rank
    cfg, parent = finetune.resolve(cfg, given, resume is not None)  # before any data is read
    run = set_up(cfg, ctx, resume, progress and ctx.main, parent)
    try:
        log_start(run, resume)
        if resume is not None:
            ckpt.restore_rng(resume.state["rng"])  # after model init and everything else that drew from it
        with stop_requests() as stop:
            run_epochs(run, stop)
        if ctx.main:
            run.metrics.close()
        result = finish(run)
        if ctx.main:
            run.pos.registered = result.promotion.version
            run.stop_system_metrics()
            mlflow.end_run()  # before the checkpoint that makes the run unresumable: a kill between the two then
            run.checkpoint()  # leaves a resumable run that re-finishes (same version), not one RUNNING forever
        dist.barrier(ctx)  # ranks tear the process group down together, once rank 0 has registered the model
        return result
    except BaseException as e:
        if ctx.main:
            run.metrics.send_or_keep()  # the curves up to the failure
            run.stop_system_metrics()
            store.end_run("KILLED" if isinstance(e, TrainingInterrupted) else "FAILED")
        raise
    finally:
        run.trainer.ddp = None  # DDP's reducer holds the process group: release it, so shutdown destroys the group
        dist.shutdown()         # now, not in some later garbage collection (gloo threads torn down then can abort)


def set_up(cfg: TrainConfig, ctx: dist.Context, resume: Resume | None, progress: bool,
           parent: finetune.Parent | None = None) -> Run:
    """Model (from `parent`'s weights when fine-tuning), data, optimizer (restored when resuming) and the MLflow
    run: everything before the first step."""
    started = time.monotonic()
    say = print if ctx.main else lambda _: None
    text = run_text(cfg, resume.state if resume else None)
    say(text.describe())
    model = SpeechModel.from_config(cfg.recognizer(), len(text.normalizer.vocabulary))
    finetune.prepare(model, cfg, parent, text.normalizer.vocabulary.symbols, say)
    model = model.to(ctx.device)
    data = training_data(cfg, model, ctx, progress, say, text)
    if not data.items:
        raise UserError(f"no usable training utterances in {','.join(cfg.data.train_data)}: {data.skipped}")
    feature_stats = {}
    if cfg.model.streaming and parent is None and resume is None:
        feature_stats = normalization.fit_statistics(model, data.train_set, data.items, cfg.optim.seed)
        say(f"feature statistics (streaming model): {feature_stats['feature_stats_utterances']} training "
            f"utterances, {feature_stats['feature_stats_frames']} frames")
    torch.set_num_threads(intra_op_threads(cfg, data.loader_workers))
    steps = total_steps(cfg, data, ctx.world)
    precision = decide_precision(cfg, ctx)  # with the threads the steps get: the probe times them
    trainer = build_trainer(cfg, ctx, model, precision.dtype, steps)
    pos, best_state = restore(resume, model, trainer.optimizer, trainer.scheduler, trainer.scaler) if resume \
        else (Progress(), None)
    trainer.distribute()
    run_id = ""
    if ctx.main:
        # MLflow's own monitor is started below, once the run exists, whatever $MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
        active = mlflow.start_run(run_id=resume.state["run_id"], log_system_metrics=False) if resume \
            else mlflow.start_run(run_name=cfg.tracking.run_name or None, log_system_metrics=False)
        run_id = active.info.run_id
    out_dir = resume.out_dir if resume else Path(cfg.checkpoint.output_dir) / run_id
    run = Run(trainer, data, pos, run_id, out_dir, MetricLog(run_id, out_dir), progress, best_state,
              started=started, earlier_seconds=pos.seconds, precision=precision, feature_stats=feature_stats)
    if ctx.main:  # a resumed run's parent is the one its first part recorded
        run.parent = lineage.parent_tags(run_id) if resume else parent.tags() if parent else {}
    if ctx.main and cfg.tracking.system_metrics:
        run.system_metrics = SystemMetrics(run_id, resumed=resume is not None)
    n_params, n_trainable = sum(p.numel() for p in model.parameters()), finetune.trainable(model)
    frozen = f" ({n_trainable / 1e6:.2f} M trained, {','.join(cfg.finetune.freeze)} frozen)" if cfg.finetune.freeze \
        else ""
    run.say(f"train: {len(data.items)} utterances from {','.join(cfg.data.train_data)} "
            f"({sum(data.skipped.values())} skipped: {data.skipped}; {sum(data.left_out.values())} left out by the "
            f"corpus reader); dev: {len(data.dev_set)} from "
            f"{','.join(cfg.data.dev_data)}")
    run.say(f"transcripts (train): {data.train_set.text_counts.summary()}")
    run.say(f"model: {n_params / 1e6:.2f} M parameters{frozen}; {ctx.device.type} x {ctx.world}, "
            f"{precision.describe()}, {torch.get_num_threads()} threads; "
            f"{lineage.counted(cfg.optim.epoch, 'epoch')}, {lineage.counted(steps, 'step')}")
    return run


def decide_precision(cfg: TrainConfig, ctx: dist.Context) -> Decision:
    """--precision for this run (see asr.precision.decide). A CPU probe runs on the main rank alone, whose
    decision every rank takes: ranks sharing a machine would otherwise time each other's load, and could disagree."""
    if cfg.optim.precision != "auto" or ctx.device.type == "cuda":
        return decide(cfg.optim.precision, ctx.device, cfg.recognizer(), training=True)
    decision = decide("auto", ctx.device, cfg.recognizer(), training=True, batch=cfg.optim.batch) if ctx.main \
        else None
    return dist.gather(decision, ctx)[0]


def log_start(run: Run, resume: Resume | None) -> None:
    """A new run logs its settings, skip counts, config.json and vocabulary; a resumed one says where it resumes."""
    if not run.trainer.ctx.main:
        return
    if resume is not None:
        changes = f"; taking {resume.describe_changes()}" if resume.changed else ""
        run.say(f"resuming run {run.run_id} from {resume.path}: epoch {run.pos.epoch + 1}, step {run.pos.step}"
                f"{changes}")
        return
    cfg = run.trainer.cfg
    params = {**to_params(cfg), "parameters": sum(p.numel() for p in run.trainer.model.parameters()),
              "trainable_parameters": finetune.trainable(run.trainer.model), "train_utterances": len(run.data.items),
              **run.precision.params(), **run.feature_stats}
    logged = mlflow.active_run().data.params  # `mlflow run` has already logged its entry point's parameters
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    mlflow.set_tags({**lineage.source_tags(mlflow.active_run().data.tags), **run.parent})
    for context, used in training_splits(run).items():
        lineage.log_split(context, *used)
    mlflow.log_metrics({k: float(v) for k, v in {**run.data.skipped, **run.data.left_out}.items()})
    run.out_dir.mkdir(parents=True, exist_ok=True)
    save(cfg, run.out_dir / "config.json")
    mlflow.log_artifact(str(run.out_dir / "config.json"))
    mlflow.log_dict(run.data.text.normalizer.vocabulary.to_json(), "vocab.json")
    log_text_normalization(run)


def log_text_normalization(run: Run, test: TextCounts | None = None) -> None:
    """What normalization did to the transcripts: text_* metrics of the training split (numbers spelled out,
    characters folded into the vocabulary or dropped) and text_normalization.json (the vocabulary, where it comes
    from and the characters it saw too seldom to learn; per split, per character counts and example numbers).
    Logged again, with the test split, once that is read."""
    data, text = run.data, run.data.text
    mlflow.log_metrics(data.train_set.text_counts.metrics())
    splits = {"train": data.train_set.text_counts, "dev": data.dev_set.text_counts,
              **({"test": test} if test is not None else {})}
    mlflow.log_dict({"language": text.normalizer.language, "lowercase": text.normalizer.lowercase,
                     "vocabulary": {"size": len(text.normalizer.vocabulary), "source": text.source,
                                    "symbols": list(text.normalizer.vocabulary.symbols), "rare": text.rare},
                     "splits": {name: counts.to_json() for name, counts in splits.items()}},
                    "text_normalization.json")


def run_epochs(run: Run, stop: list[int]) -> None:
    """Epochs from where `run.pos` stands to the last one or an early stop: train, log every step, checkpoint every
    cfg.checkpoint.checkpoint_every steps and at every epoch end, and stop cleanly on a stop request."""
    t, cfg, ctx, pos = run.trainer, run.trainer.cfg, run.trainer.ctx, run.pos

    def after_step(loss: float, _: EpochStats) -> bool:
        kill_point(f"step {pos.step}")  # the step is taken, its checkpoint not yet written
        if ctx.main:
            run.metrics.log({"loss": loss, "learning_rate": t.scheduler.get_last_lr()[0],
                             "skipped_steps": pos.skipped_steps}, pos.step)
        if dist.any_rank(bool(stop), ctx):
            raise TrainingInterrupted(interrupted(stop, pos, run.checkpoint(), run.out_dir))
        if cfg.checkpoint.checkpoint_every and pos.step % cfg.checkpoint.checkpoint_every == 0:
            run.checkpoint()
        return False

    while pos.epoch < cfg.optim.epoch:
        started = time.time()
        stats = train_one_epoch(t, run.data, pos, after_step, run.progress)
        end_epoch(run, stats, time.time() - started)
        run.checkpoint()
        if dist.any_rank(bool(stop), ctx):
            raise TrainingInterrupted(interrupted(stop, pos, run.out_dir / ckpt.LAST, run.out_dir))


def end_epoch(run: Run, stats: EpochStats, elapsed: float) -> None:
    """Validates on dev, keeps the best epoch's weights (best.pt), logs and prints the epoch, and moves `run.pos`
    to the next epoch, or past the last one when dev has not improved for cfg.optim.patience epochs."""
    t, cfg, ctx, pos = run.trainer, run.trainer.cfg, run.trainer.ctx, run.pos
    audio_seconds = dist.all_sum([stats.audio_frames * cfg.features.hop_ms / 1000], ctx)[0]
    dev, _ = compute_validation(t.model, run.data.dev_set, run.data.dev_lengths, cfg, t.amp, ctx)
    improved = (dev["wer"], dev["cer"]) < pos.best  # CER breaks ties while WER is still stuck at 1.0
    if improved:
        pos.best, pos.best_epoch, pos.bad_epochs = (dev["wer"], dev["cer"]), pos.epoch + 1, 0
        run.best_state = copy.deepcopy(t.model.state_dict())
        if ctx.main:
            ckpt.atomic_save(ckpt.model_state(cfg.recognizer(), t.model, run.data.text.normalizer),
                             run.out_dir / ckpt.BEST)
    else:
        pos.bad_epochs += 1
    if ctx.main:
        run.metrics.log({"val_loss": dev["loss"], "wer": dev["wer"], "cer": dev["cer"],
                         "audio_seconds_per_second": audio_seconds / elapsed}, pos.epoch + 1)
    run.say(f"epoch {pos.epoch + 1}/{cfg.optim.epoch}: val_loss {dev['loss']:.3f}  WER {dev['wer']:.3f}  "
            f"CER {dev['cer']:.3f}  ({elapsed:.0f} s, {audio_seconds / elapsed:.0f} audio-s/s over "
            f"{stats.batches} batches){'  *' if improved else ''}")
    pos.epoch, pos.batch = pos.epoch + 1, 0
    if cfg.optim.patience and pos.bad_epochs >= cfg.optim.patience:
        run.say(f"early stop: no better dev WER/CER for {lineage.counted(cfg.optim.patience, 'epoch')} "
                f"(best: epoch {pos.best_epoch})")
        pos.epoch = cfg.optim.epoch


def finish(run: Run) -> TrainResult:
    """Scores the best epoch's weights on dev and test, decides the decoder the model carries (tuned on dev, see
    asr.training.decoder), then logs, registers and promotes them (main rank) by the dev WER of that decoder."""
    t, cfg, ctx = run.trainer, run.trainer.cfg, run.trainer.ctx
    if run.best_state is not None:
        t.model.load_state_dict(run.best_state)
    dev, _ = compute_validation(t.model, run.data.dev_set, run.data.dev_lengths, cfg, t.amp, ctx)
    test, test_utts = score_test(run)
    if not ctx.main:
        return TrainResult(run.run_id, dev, test, None)
    mlflow.log_metrics({"best_wer": dev["wer"], "best_cer": dev["cer"], "best_epoch": run.pos.best_epoch})
    if test:
        mlflow.log_metrics({"test_loss": test["loss"]})
    text = run.data.text.normalizer
    checkpoint = ckpt.atomic_save(ckpt.model_state(cfg.recognizer(), t.model, text), run.out_dir / ckpt.MODEL)
    decoding = model_decoder.attach(cfg, t.model, run.out_dir, run.data.train_set.utterances,
                                    run.data.dev_set.utterances, test_utts, run.progress, run.say, text)
    log_decoding(decoding)
    for split, rows in decoding.predictions.items():
        log_predictions(rows, f"predictions_{split}.json")
    lineage.set_description(describe(run, decoding.dev, decoding.test, decoding.description))
    for split, names, scores in (("dev", cfg.data.dev_data, decoding.dev), ("held-out test", cfg.data.test_data,
                                                                           decoding.test)):
        if scores:
            greedy = "" if decoding.description == "greedy" else \
                f"; greedy WER {scores['wer_greedy']:.3f}  CER {scores['cer_greedy']:.3f}"
            print(f"{split} ({','.join(names)}): {decoding.description} WER {scores['wer']:.3f}  CER "
                  f"{scores['cer']:.3f}{greedy}")
    uri = log_model(checkpoint, run.data.dev_set.utterances[0].path, decoding.files)
    name = cfg.tracking.registered_model
    kill_point("logged")  # model.pt written and the model logged, not yet registered
    try:
        promotion = registry.register_and_promote(uri, name, run.run_id, decoding.dev["wer"],
                                                  split_digest(run.data.dev_set.utterances), cfg.tracking.promote,
                                                  tags={**version_tags(decoding), **run.parent})
    except store.TrackingError as e:
        raise store.TrackingError(f"{e}; once the registry answers, asr train --resume {run.out_dir} registers "
                                  "the model") from None
    kill_point("registered")
    publish_card(run, decoding, name, promotion.version)
    mlflow.set_tags({lineage.REGISTERED_MODEL_TAG: name, lineage.MODEL_VERSION_TAG: promotion.version,
                    "promoted": str(promotion.promoted)})
    print(f"{name} {promotion.describe()}")
    return TrainResult(run.run_id, dev, test, promotion, decoding)


def training_splits(run: Run) -> dict[str, SplitUse]:
    """The training and dev splits as the run uses them, by MLflow dataset context: the training utterances worth
    training on (not those skipped), every dev utterance."""
    cfg, data, hop = run.trainer.cfg, run.data, run.trainer.cfg.features.hop_ms / 1000
    return {lineage.TRAINING: (cfg.data.train_data, [data.train_set.utterances[i] for i in data.items],
                               [data.train_lengths[i] * hop for i in data.items]),
            lineage.VALIDATION: (cfg.data.dev_data, data.dev_set.utterances, [n * hop for n in data.dev_lengths])}


def publish_card(run: Run, decoding: model_decoder.Decoding, name: str, version: str) -> None:
    """Sets the model card as the registered version's description, and logs it as the run's model_card.md. Set
    again (not appended) by a run resumed after registering."""
    card = model_card.render(card_facts(run, decoding, name, version))
    try:
        registry.set_version_description(name, version, card)
    except store.TrackingError as e:
        raise store.TrackingError(f"{e}; once the registry answers, asr train --resume {run.out_dir} sets it") \
            from None
    mlflow.log_text(card, model_card.ARTIFACT)


def card_facts(run: Run, decoding: model_decoder.Decoding, name: str, version: str) -> model_card.ModelCard:
    """What the model card says about the version this run registered, from what the run already holds."""
    t, cfg, pos = run.trainer, run.trainer.cfg, run.pos
    used = {**training_splits(run), **({lineage.TEST: run.test_split} if run.test_split else {})}
    names = {lineage.TRAINING: "train", lineage.VALIDATION: "dev", lineage.TEST: "test"}
    held_out = run.test_split if run.test_split and run.test_split[1] else used[lineage.VALIDATION]  # the example's
    rows = [model_card.SplitRow(names[context], ds.name, ds.digest, **ds.profile)
            for context, split in used.items() for ds in lineage.split_datasets(*split)]
    training = model_card.TrainingFacts(
        pos.best_epoch + pos.bad_epochs, cfg.optim.epoch, pos.best_epoch, run.wall_seconds(), t.ctx.device.type,
        hardware(t.ctx.device), t.ctx.world, run.precision.name, torch.get_num_threads(), run.run_id,
        run.parent.get(lineage.PARENT_TAG, ""), run.parent.get(lineage.PARENT_SHA256_TAG, ""), cfg.finetune.freeze)
    return model_card.ModelCard(
        name, version, sum(p.numel() for p in t.model.parameters()), cfg.model, cfg.features,
        len(run.data.text.normalizer.vocabulary),
        ckpt.MODEL, rows, training, decoding.description, decoding.config,
        cfg.decoder.lm_order if cfg.decoder.attached and not cfg.decoder.lm else None, len(decoding.grid),
        decoding.dev, decoding.test, example(*held_out), run.data.text.normalizer.language)


def example(dirs: Sequence[str], utterances: list[Utterance], seconds: list[float]) -> model_card.Example:
    """An utterance of the split with audio (an unreadable one has none), and the split folder holding it."""
    u = next((u for u, s in zip(utterances, seconds, strict=True) if s > 0), utterances[0])
    home = next((d for d in dirs if u.path.is_relative_to(d)), dirs[0])
    return model_card.Example(u.file_id, str(home), str(u.path))


def hardware(device: torch.device) -> str:
    """The GPU's name, or the CPU model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def version_tags(decoding: model_decoder.Decoding) -> dict[str, str]:
    """Tags of the registered version besides its dev WER: the decoder it serves and, with a test split, that
    decoder's held-out WER and CER, so the registry shows how good a version is without opening its run."""
    tags = {registry.DECODER_TAG: decoding.description}
    tags.update({f"test_{k}": f"{decoding.test[k]:.4f}" for k in ("wer", "cer") if k in decoding.test})
    return tags


def log_decoding(decoding: model_decoder.Decoding) -> None:
    """The model's decoder on the run: dev_/test_ WER and CER of that decoder and (`_greedy`) of greedy decoding,
    the tuned LM weight and word score as params, the tuning grid as a table, and a `decoder` tag."""
    mlflow.log_metrics({f"{split}_{k}": v for split, scores in (("dev", decoding.dev), ("test", decoding.test))
                        for k, v in scores.items()})
    mlflow.set_tag(registry.DECODER_TAG, decoding.description)
    if decoding.grid:
        c = decoding.config
        logged = mlflow.active_run().data.params  # a resumed run that finishes again tunes the same values
        mlflow.log_params({k: v for k, v in {"lm_weight": c.lm_weight, "word_score": c.word_score}.items()
                           if k not in logged})
        log_table_once({k: [p[k] for p in decoding.grid] for k in decoding.grid[0]}, "lm_grid.json")


def score_test(run: Run) -> tuple[dict[str, float], list]:
    """Loss, WER and CER (greedy) on the held-out test split, and its utterances; ({}, []) when there is none."""
    t, cfg = run.trainer, run.trainer.cfg
    if not cfg.data.test_data:
        return {}, []
    test_set = load_dataset(cfg.data.test_data, run.data.features, text=run.data.text.normalizer)
    lengths = featurize_split(test_set, cfg, t.ctx, run.progress, "features test")
    for message in test_set.unreadable:
        run.say(f"skipping {message}")
    if t.ctx.main:
        hop = cfg.features.hop_ms / 1000
        run.test_split = (cfg.data.test_data, test_set.utterances, [n * hop for n in lengths])
        lineage.log_split(lineage.TEST, *run.test_split)
        run.test_summary = lineage.split_summary(cfg.data.test_data, len(test_set), sum(lengths) * hop)
        log_text_normalization(run, test_set.text_counts)
    return compute_validation(t.model, test_set, lengths, cfg, t.amp, t.ctx)[0], test_set.utterances


def describe(run: Run, dev: dict[str, float], test: dict[str, float], decoder: str) -> str:
    """The run's two-line description: the model and what it was trained on, then its held-out scores with the
    model's own decoder (`decoder` names it)."""
    cfg, data, hop = run.trainer.cfg, run.data, run.trainer.cfg.features.hop_ms / 1000
    m = cfg.model
    n_params = sum(p.numel() for p in run.trainer.model.parameters())
    model = (f"{n_params / 1e6:.2f} M-parameter CTC model ({lineage.counted(m.cnn_layers, 'CNN block')}, "
             f"{m.rnn_layers} x {m.rnn_dim} {recurrence(m)} GRU, {cfg.features.n_mfcc} MFCCs)")
    trained = run.pos.best_epoch + run.pos.bad_epochs  # epochs run, early stop or not
    epochs = f"{lineage.counted(trained, 'epoch')} (best: {run.pos.best_epoch})"
    train = lineage.split_summary(cfg.data.train_data, len(data.items), sum(data.train_lengths[i] for i in data.items)
                                  * hop)
    dev_split = lineage.split_summary(cfg.data.dev_data, len(data.dev_set), sum(data.dev_lengths) * hop)
    return lineage.run_description(model, train, epochs, dev_split, dev, run.test_summary, test, decoder)


def recurrence(m: ModelConfig) -> str:
    """The GRUs' kind in words: bidirectional, or unidirectional with the streaming model's look-ahead."""
    return f"unidirectional (streaming, look-ahead {m.lookahead})" if m.streaming else "bidirectional"


def log_predictions(rows: list[dict[str, str]], name: str) -> None:
    """A split's predictions table (model_decoder.PREDICTION_COLUMNS): per utterance, the text of the decoder the
    model serves (`prediction`, what the run's dev_/test_ WER and CER score) and of greedy decoding."""
    log_table_once({k: [row[k] for row in rows] for k in model_decoder.PREDICTION_COLUMNS}, name)


def log_table_once(columns: dict[str, list], name: str) -> None:
    """mlflow.log_table, unless the run has the table already: MLflow appends to an existing table, so a run
    killed after logging its tables would list every row twice once it resumes and finishes again."""
    run_id = mlflow.active_run().info.run_id
    if name not in {f.path for f in MlflowClient().list_artifacts(run_id)}:
        mlflow.log_table(columns, name)
