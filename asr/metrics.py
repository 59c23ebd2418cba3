"""Corpus-level error rates: total edits over total reference words/characters, never a mean of rates."""

from __future__ import annotations

import jiwer


def _pairs(references: list[str], hypotheses: list[str]) -> tuple[list[str], list[str]]:
    # jiwer refuses empty references; an utterance with no words cannot contribute errors per word anyway.
    kept = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    return [r for r, _ in kept], [h for _, h in kept]


def wer(references: list[str], hypotheses: list[str]) -> float:
    refs, hyps = _pairs(references, hypotheses)
    return float(jiwer.wer(refs, hyps)) if refs else 0.0


def cer(references: list[str], hypotheses: list[str]) -> float:
    refs, hyps = _pairs(references, hypotheses)
    return float(jiwer.cer(refs, hyps)) if refs else 0.0
