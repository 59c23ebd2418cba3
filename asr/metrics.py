"""Corpus-level error rates: total edits over total reference words/characters, never a mean of rates.

jiwer scores a list of pairs this way, counts insertions against empty references, and refuses
lists of different lengths (ValueError).
"""

from __future__ import annotations

import jiwer


def wer(references: list[str], hypotheses: list[str]) -> float:
    return float(jiwer.wer(list(references), list(hypotheses)))


def cer(references: list[str], hypotheses: list[str]) -> float:
    return float(jiwer.cer(list(references), list(hypotheses)))
