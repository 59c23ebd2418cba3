"""Corpus-level error rates: total edits over total reference words/characters, never a mean of rates."""

from __future__ import annotations

import jiwer


def _pairs(references: list[str], hypotheses: list[str]) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return list(references), list(hypotheses)


def wer(references: list[str], hypotheses: list[str]) -> float:
    refs, hyps = _pairs(references, hypotheses)
    return float(jiwer.wer(refs, hyps)) if refs else 0.0


def cer(references: list[str], hypotheses: list[str]) -> float:
    refs, hyps = _pairs(references, hypotheses)
    return float(jiwer.cer(refs, hyps)) if refs else 0.0
