"""Scoring a trained model on whole splits: `asr evaluate` (one decoder setting) and `asr lm tune` (a grid of
LM weights and word scores over the same model outputs, which are computed once)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
import torch

from asr import UserError
from asr.audio import AudioError, load_audio
from asr.config import DecodeConfig, check_paths, to_params
from asr.data.dataset import CorpusReading, DataError, LeftOut, Utterance, read_corpus, split_names
from asr.data.progress import progress_bar
from asr.decoding import check_request, describe, make_decoder
from asr.loading import ModelSource, load_transcriber, model_source
from asr.metrics import cer, wer
from asr.settings import EvaluateConfig, TuneConfig
from asr.tracking.lineage import EVALUATION, log_split, model_tags
from asr.tracking.store import setup, setup_uri, side_run
from asr.transcribe import Transcriber

GROUP = 32  # utterances read and run through the model at a time: bounds memory on any split size


@dataclass
class Scores:
    wer: float
    cer: float
    utterances: int                                     # scored: WER and CER are over these
    audio_seconds: float
    seconds: float                                      # wall time of model + decoding
    rows: list[dict] = field(default_factory=list)      # per utterance, worst first
    unreadable: list[str] = field(default_factory=list)  # why each audio file skipped could not be used
    left_out: list[LeftOut] = field(default_factory=list)  # what the corpus reader did not make utterances of
    scored: list[Utterance] = field(default_factory=list)  # the utterances scored, in corpus order
    durations: list[float] = field(default_factory=list)   # their audio, seconds each

    def skipped(self) -> dict[str, int]:
        return skip_counts(self.unreadable, self.left_out)


def skip_counts(unreadable: list[str], left_out: list[LeftOut]) -> dict[str, int]:
    """Counts of what scores leave out, for MLflow: `skipped_unreadable` (as training's) and the reader's
    `left_out_<reason>`."""
    return {"skipped_unreadable": len(unreadable), **CorpusReading([], left_out).counts()}


def _log_skipped(unreadable: list[str], left_out: list[LeftOut]) -> None:
    """The counts as metrics and, when there is anything, every item with its reason as skipped.json."""
    mlflow.log_metrics({k: float(v) for k, v in skip_counts(unreadable, left_out).items()})
    if unreadable or left_out:
        mlflow.log_dict({"unreadable": unreadable, "left_out": [dataclasses.asdict(item) for item in left_out]},
                        "skipped.json")


@dataclass
class TuneResult:
    best: dict                 # lm_weight, word_score, wer, cer of the best grid point
    grid: list[dict]           # every grid point
    utterances: int            # scored: every grid point's WER and CER are over these
    lm: str                    # the LM tuned (a path), and its lexicon ('' = the LM's own words)
    lexicon: str
    models_own: bool           # the LM is the model's own (no --lm given), not one given
    unreadable: list[str] = field(default_factory=list)    # as in Scores
    left_out: list[LeftOut] = field(default_factory=list)


def corpus_of(dataset: Sequence[str], limit: int = 0) -> CorpusReading:
    """The utterances of one or more splits (the first `limit`, if set) and what the reader left out."""
    if not dataset:
        raise UserError("no dataset given: name one or more split folders")
    reading = read_corpus(dataset)
    if limit:
        reading.utterances = reading.utterances[:limit]
    return reading


def utterances_of(dataset: Sequence[str], limit: int = 0) -> list[Utterance]:
    """The utterances of one or more splits (the first `limit`, if set)."""
    return corpus_of(dataset, limit).utterances


def model_outputs(transcriber: Transcriber, utts: list[Utterance], progress: bool, desc: str,
                  unreadable: list[str] | None = None
                  ) -> Iterator[tuple[list[Utterance], list[list[torch.Tensor]], list[float]]]:
    """Groups of utterances with their emissions and the audio seconds of each. An audio file that cannot be
    used is skipped and its message added to `unreadable` (as training does: one corrupt file must not stop the
    scoring of a split); without `unreadable`, it raises."""
    bar = progress_bar(total=len(utts), desc=desc, unit="utt", enabled=progress)
    for start in range(0, len(utts), GROUP):
        chunk, group, waves = utts[start:start + GROUP], [], []
        for u in chunk:
            try:
                waves.append(load_audio(u.path, transcriber.sample_rate))
                group.append(u)
            except AudioError as e:
                if unreadable is None:
                    raise
                unreadable.append(str(e))
        if group:
            yield group, transcriber.emissions(waves), [w.numel() / transcriber.sample_rate for w in waves]
        bar.update(len(chunk))
    bar.close()
    if unreadable and len(unreadable) == len(utts):
        raise DataError(f"none of the {len(utts)} audio files can be used, e.g. {unreadable[0]}")


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
    """Transcribes `utts` with the transcriber's decoder and scores those whose audio can be used (the others are
    in `unreadable`; DataError when there are none); the wall time includes reading audio."""
    references, hypotheses, scored, unreadable, durations = [], [], [], [], []
    start = time.perf_counter()
    for group, emissions, seconds in model_outputs(transcriber, utts, progress, desc, unreadable):
        hypotheses += transcriber.decode(emissions)
        references += [transcriber.text.normalized(u.transcript) for u in group]
        scored += group
        durations += seconds
    scores = score(references, hypotheses, scored, sum(durations), time.perf_counter() - start)
    scores.unreadable, scores.scored, scores.durations = unreadable, scored, durations
    return scores


def _prepare(cfg: EvaluateConfig, given: Collection[str] | None = None
             ) -> tuple[CorpusReading, Transcriber, ModelSource]:
    """The utterances, the model decoding as `given` says (see evaluate; None: every setting of cfg), and which
    model it is (a stage or alias pinned to its version, the one loaded); the experiment is set up only once both
    load, so a bad model or dataset leaves no experiment or store behind."""
    check_paths(cfg)  # for callers other than the CLI: a missing LM or lexicon is found before the model loads
    reading = corpus_of(cfg.dataset, cfg.max_utterances)
    setup_uri(cfg.model_uri)
    source = model_source(cfg.model_uri)
    if given is None:
        transcriber = load_transcriber(source.uri, _decode_config(cfg))
    else:
        transcriber = load_transcriber(source.uri, overrides=_given_decoding(cfg, given))
    transcriber.batch_seconds = cfg.batch_seconds
    setup(cfg.experiment)
    return reading, transcriber, source


def evaluate(cfg: EvaluateConfig, progress: bool = True, given: Collection[str] | None = None) -> Scores:
    """Scores the model on every utterance of cfg.dataset whose audio can be used, decoding with the model's own
    decoder changed by the decoder settings `given` names (the options given on the command line; None: those
    that differ from the defaults). Files that cannot be used are skipped and counted, not fatal (one corrupt file
    must not hide the score of the rest); the scores say over how many utterances they are, so runs stay
    comparable. Nothing scorable at all is a DataError."""
    reading, transcriber, source = _prepare(cfg, _changed_decoding(cfg) if given is None else given)
    scores = score_split(transcriber, reading.utterances, progress, "evaluate")
    scores.left_out = reading.left_out
    _log(cfg, scores, transcriber.decode_cfg, transcriber.precision_params(), source)
    return scores


def _given_decoding(cfg: EvaluateConfig, given: Collection[str]) -> dict[str, Any]:
    """The decoder settings `given` names, with their values in `cfg`."""
    decoding = {f.name for f in dataclasses.fields(DecodeConfig)}
    return {k: getattr(cfg, k) for k in given if k in decoding}


def _changed_decoding(cfg: EvaluateConfig) -> set[str]:
    """The decoder settings of `cfg` that differ from the defaults: what a caller without a command line asks for."""
    defaults = EvaluateConfig()
    return {f.name for f in dataclasses.fields(DecodeConfig) if getattr(cfg, f.name) != getattr(defaults, f.name)}


def _decode_config(cfg: DecodeConfig) -> DecodeConfig:
    return DecodeConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DecodeConfig)})


def _log(cfg: EvaluateConfig, scores: Scores, decoded: DecodeConfig, precision: dict[str, str],
         source: ModelSource) -> None:
    """The evaluation as a run; its decoder params are the settings it decoded with (the model's own, unless
    changed), `decoder_description` says which in a few words, and precision_used / precision_probe what the
    acoustic model computed in and why; tagged with the model version scored (lineage.model_tags), and the
    utterances scored as dataset inputs (context EVALUATION, one per split folder)."""
    params = {**to_params(cfg), **to_params(decoded), "decoder_description": describe(decoded), **precision}
    with side_run("evaluate", split_names(cfg.dataset), params, model_tags(source)):
        log_split(EVALUATION, cfg.dataset, scores.scored, scores.durations)
        mlflow.log_metrics({"wer": scores.wer, "cer": scores.cer, "utterances": scores.utterances,
                            "audio_seconds": scores.audio_seconds,
                            "audio_seconds_per_second": scores.audio_seconds / max(scores.seconds, 1e-9)})
        _log_skipped(scores.unreadable, scores.left_out)
        worst = scores.rows[: cfg.worst]
        mlflow.log_table({k: [row[k] for row in worst] for k in ("file_id", "errors", "wer", "cer", "target",
                                                                "predicted")}, "worst_errors.json")


def outputs_of(transcriber: Transcriber, utts: list[Utterance], progress: bool, desc: str,
               unreadable: list[str]) -> tuple[list[list[torch.Tensor]], list[str], list[Utterance]]:
    """The model's outputs (one acoustic pass), the transcripts normalized as the model's (its vocabulary and
    language) and the utterances themselves, of every
    utterance whose audio can be used, in order, to decode as many ways as wanted; what could not be used goes to
    `unreadable`."""
    emissions, references, scored = [], [], []
    for group, per_wave, _ in model_outputs(transcriber, utts, progress, desc, unreadable):
        emissions += per_wave
        references += [transcriber.text.normalized(u.transcript) for u in group]
        scored += group
    return emissions, references, scored


def grid_search(transcriber: Transcriber, emissions: list[list[torch.Tensor]], references: list[str],
                base: DecodeConfig, lm_weights: Sequence[float], word_scores: Sequence[float],
                progress: bool = False) -> tuple[dict, list[dict]]:
    """Every (lm_weight, word_score) pair scored on the same model outputs; returns the best point (lowest WER,
    then CER, then the first in grid order) and the grid."""
    grid = []
    points = list(itertools.product(lm_weights, word_scores))
    for weight, bonus in progress_bar(points, desc="grid", enabled=progress):
        decoder = make_decoder(dataclasses.replace(base, lm_weight=weight, word_score=bonus), transcriber.text)
        hypotheses = transcriber.decode(emissions, decoder)
        grid.append({"lm_weight": weight, "word_score": bonus, "wer": wer(references, hypotheses),
                     "cer": cer(references, hypotheses)})
    return min(grid, key=lambda p: (p["wer"], p["cer"])), grid


def tune(cfg: TuneConfig, progress: bool = True, given: Collection[str] | None = None) -> TuneResult:
    """Every (lm_weight, word_score) pair of the grid scored on `cfg.dataset`; the model runs once. The LM is
    cfg.lm with cfg's decoder settings or, without one, the model's own LM and lexicon with its own decoder settings
    changed by those `given` names (as in evaluate). Raises UserError for a model that carries no LM when no
    cfg.lm is given."""
    given = _changed_decoding(cfg) if given is None else given
    check_request(_given_decoding(cfg, given))  # --decoder greedy with --lm: refused before anything loads
    reading, transcriber, source = _prepare(cfg, None if cfg.lm else given)
    base = transcriber.decode_cfg
    if not base.lm:
        raise UserError(f"no LM to tune: {cfg.model_uri} carries none (trained without one, or --decoder greedy "
                        "given); pass --lm (an ARPA or KenLM binary LM, e.g. from `asr lm build`)")
    unreadable: list[str] = []
    emissions, references, _ = outputs_of(transcriber, reading.utterances, progress, "model", unreadable)
    best, grid = grid_search(transcriber, emissions, references, base, cfg.lm_weights, cfg.word_scores, progress)
    params = {**to_params(cfg), "lm": base.lm, "lexicon": base.lexicon, "lm_source": "option" if cfg.lm else "model"}
    with side_run("lm-tune", split_names(cfg.dataset), params, model_tags(source)):
        mlflow.log_table({k: [p[k] for p in grid] for k in grid[0]}, "lm_grid.json")
        mlflow.log_metrics({"best_wer": best["wer"], "best_cer": best["cer"], "best_lm_weight": best["lm_weight"],
                            "best_word_score": best["word_score"], "utterances": len(references)})
        _log_skipped(unreadable, reading.left_out)
    return TuneResult(best, grid, len(references), base.lm, base.lexicon, not cfg.lm, unreadable, reading.left_out)
