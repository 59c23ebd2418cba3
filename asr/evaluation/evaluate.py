"""Scoring a trained model on whole splits: `asr evaluate` (one decoder setting) and `asr lm tune` (a grid of
LM weights and word scores over the same model outputs, which are computed once)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import mlflow
import torch
from tqdm import tqdm

from asr import UserError
from asr.audio import load_audio
from asr.config import DecodeConfig, check_paths, to_params
from asr.data.dataset import Utterance, read_splits, split_names
from asr.decoding import make_decoder
from asr.loading import load_transcriber
from asr.metrics import cer, wer
from asr.settings import EvaluateConfig, TuneConfig
from asr.text import normalized
from asr.tracking.store import setup, setup_uri, side_run
from asr.transcribe import Transcriber

GROUP = 32  # utterances read and run through the model at a time: bounds memory on any split size


@dataclass
class Scores:
    wer: float
    cer: float
    utterances: int
    audio_seconds: float
    seconds: float                                      # wall time of model + decoding
    rows: list[dict] = field(default_factory=list)      # per utterance, worst first


@dataclass
class TuneResult:
    best: dict                 # lm_weight, word_score, wer, cer of the best grid point
    grid: list[dict]           # every grid point


def utterances_of(dataset: Sequence[str], limit: int = 0) -> list[Utterance]:
    """The utterances of one or more splits (the first `limit`, if set)."""
    if not dataset:
        raise UserError("no dataset given: name one or more split folders")
    utts = read_splits(dataset)
    return utts[:limit] if limit else utts


def model_outputs(transcriber: Transcriber, utts: list[Utterance], progress: bool, desc: str
                  ) -> Iterator[tuple[list[Utterance], list[list[torch.Tensor]], float]]:
    """Groups of utterances with their emissions and the audio seconds they hold."""
    bar = tqdm(total=len(utts), desc=desc, unit="utt", disable=not progress)
    for start in range(0, len(utts), GROUP):
        group = utts[start:start + GROUP]
        waves = [load_audio(u.path, transcriber.sample_rate) for u in group]
        yield group, transcriber.emissions(waves), sum(w.numel() for w in waves) / transcriber.sample_rate
        bar.update(len(group))
    bar.close()


def score(references: list[str], hypotheses: list[str], utts: list[Utterance], audio_seconds: float,
          seconds: float) -> Scores:
    rows = [_row(u, r, h) for u, r, h in zip(utts, references, hypotheses, strict=True)]
    rows.sort(key=lambda row: (-row["errors"], row["file_id"]))
    return Scores(wer(references, hypotheses), cer(references, hypotheses), len(utts), audio_seconds, seconds,
                  rows)


def _row(utt: Utterance, reference: str, hypothesis: str) -> dict:
    """One utterance's line of the worst-errors table, sorted by character edits."""
    rate = cer([reference], [hypothesis])
    return {"file_id": utt.file_id, "errors": round(rate * max(len(reference), 1)),
            "wer": wer([reference], [hypothesis]), "cer": rate, "target": reference, "predicted": hypothesis}


def score_split(transcriber: Transcriber, utts: list[Utterance], progress: bool = False, desc: str = "") -> Scores:
    """Transcribes `utts` with the transcriber's decoder and scores them; the wall time includes reading audio."""
    references, hypotheses, audio_seconds = [], [], 0.0
    start = time.perf_counter()
    for group, emissions, audio in model_outputs(transcriber, utts, progress, desc):
        hypotheses += transcriber.decode(emissions)
        references += [normalized(u.transcript) for u in group]
        audio_seconds += audio
    return score(references, hypotheses, utts, audio_seconds, time.perf_counter() - start)


def _prepare(cfg: EvaluateConfig) -> tuple[list[Utterance], Transcriber]:
    """The utterances and the model; the experiment is set up only once both load, so a bad model or dataset
    leaves no experiment or store behind."""
    check_paths(cfg)  # for callers other than the CLI: a missing LM or lexicon is found before the model loads
    utts = utterances_of(cfg.dataset, cfg.max_utterances)
    setup_uri(cfg.model_uri)
    transcriber = load_transcriber(cfg.model_uri, _decode_config(cfg))
    transcriber.batch_seconds = cfg.batch_seconds
    setup(cfg.experiment)
    return utts, transcriber


def evaluate(cfg: EvaluateConfig, progress: bool = True) -> Scores:
    utts, transcriber = _prepare(cfg)
    scores = score_split(transcriber, utts, progress, "evaluate")
    _log(cfg, scores)
    return scores


def _decode_config(cfg: DecodeConfig) -> DecodeConfig:
    return DecodeConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DecodeConfig)})


def _log(cfg: EvaluateConfig, scores: Scores) -> None:
    with side_run("evaluate", split_names(cfg.dataset), to_params(cfg)):
        mlflow.log_metrics({"wer": scores.wer, "cer": scores.cer, "utterances": scores.utterances,
                            "audio_seconds": scores.audio_seconds,
                            "audio_seconds_per_second": scores.audio_seconds / max(scores.seconds, 1e-9)})
        worst = scores.rows[: cfg.worst]
        mlflow.log_table({k: [row[k] for row in worst] for k in ("file_id", "errors", "wer", "cer", "target",
                                                                "predicted")}, "worst_errors.json")


def tune(cfg: TuneConfig, progress: bool = True) -> TuneResult:
    """Every (lm_weight, word_score) pair of the grid scored on `cfg.dataset`; the model runs once."""
    if not cfg.lm:
        raise UserError("asr lm tune needs --lm (an ARPA or KenLM binary LM, e.g. from `asr lm build`)")
    utts, transcriber = _prepare(cfg)
    emissions = [e for _, per_wave, _ in model_outputs(transcriber, utts, progress, "model") for e in per_wave]
    references = [normalized(u.transcript) for u in utts]
    grid = []
    points = list(itertools.product(cfg.lm_weights, cfg.word_scores))
    for weight, bonus in tqdm(points, desc="grid", disable=not progress):
        decoder = make_decoder(dataclasses.replace(_decode_config(cfg), lm_weight=weight, word_score=bonus))
        hypotheses = transcriber.decode(emissions, decoder)
        grid.append({"lm_weight": weight, "word_score": bonus, "wer": wer(references, hypotheses),
                     "cer": cer(references, hypotheses)})
    best = min(grid, key=lambda p: (p["wer"], p["cer"]))
    with side_run("lm-tune", split_names(cfg.dataset), to_params(cfg)):
        mlflow.log_table({k: [p[k] for p in grid] for k in grid[0]}, "lm_grid.json")
        mlflow.log_metrics({"best_wer": best["wer"], "best_cer": best["cer"], "best_lm_weight": best["lm_weight"],
                            "best_word_score": best["word_score"]})
    return TuneResult(best, grid)
