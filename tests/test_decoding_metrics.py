"""Greedy CTC decoding on hand-built log-probs, and corpus-level WER/CER."""

from __future__ import annotations

import jiwer
import pytest
import torch

from asr.decoding import greedy_decode
from asr.metrics import cer, wer
from asr.text import BLANK, VOCAB

IDX = {ch: i for i, ch in enumerate(VOCAB)}
_ = BLANK  # frames written "_" below are the blank


def log_probs_for(*paths: str, frames: int | None = None) -> torch.Tensor:
    """(B, T, C) log-probs whose per-frame argmax spells each path; '_' is the blank. Shorter paths are
    filled with 'z' frames, which a correct decoder never reads because of the lengths."""
    frames = frames or max(len(p) for p in paths)
    logits = torch.full((len(paths), frames, len(VOCAB)), -5.0)
    for b, path in enumerate(paths):
        for t in range(frames):
            ch = path[t] if t < len(path) else "z"
            logits[b, t, BLANK if ch == "_" else IDX[ch]] = 5.0
    return logits.log_softmax(dim=-1)


def decode(*paths: str, lengths: list[int] | None = None, frames: int | None = None) -> list[str]:
    lp = log_probs_for(*paths, frames=frames)
    return greedy_decode(lp, torch.tensor(lengths or [len(p) for p in paths]))


def test_repeats_are_merged():
    assert decode("hhhee_lll_llooo") == ["hello"]
    assert decode("cccaaaattt") == ["cat"]


def test_blanks_separate_doubled_letters():
    assert decode("hel_lo") == ["hello"]
    assert decode("hello") == ["helo"]  # without a blank between them, two l's are one
    assert decode("__a_a__") == ["aa"]
    assert decode("_____") == [""]


def test_spaces_and_apostrophes():
    assert decode("__don''t_  _stop__") == ["don't stop"]
    # leading, trailing and repeated spaces are normalized away
    assert decode(" _ a _  _ b  ") == ["a b"]


def test_lengths_are_respected_per_item():
    # the 'z' frames past each length must be ignored, and each item has its own length
    assert decode("ab", "abc_d", "x", frames=8) == ["ab", "abcd", "x"]
    assert decode("abcd", lengths=[2]) == ["ab"]
    assert decode("abcd", lengths=[0]) == [""]
    lp = log_probs_for("ab", "cd", frames=6)
    assert greedy_decode(lp, torch.tensor([6, 2])) == ["abz", "cd"]


def test_decoding_is_argmax_per_frame():
    lp = torch.full((1, 3, len(VOCAB)), -10.0)
    lp[0, :, IDX["a"]] = -1.0
    lp[0, 1, IDX["b"]] = -0.9  # b wins the middle frame by a hair
    assert greedy_decode(lp, torch.tensor([3])) == ["aba"]


# ---------------------------------------------------------------- WER / CER

REFS = ["the quick brown fox jumps over the lazy dog today", "hi"]
HYPS = ["the quick brown fox jumps over the lazy dog today", "ho"]


def test_wer_cer_are_corpus_level_like_jiwer():
    assert wer(REFS, HYPS) == pytest.approx(jiwer.wer(REFS, HYPS))
    assert cer(REFS, HYPS) == pytest.approx(jiwer.cer(REFS, HYPS))
    # total edits over total reference words/characters
    assert wer(REFS, HYPS) == pytest.approx(1 / 11)
    assert cer(REFS, HYPS) == pytest.approx(1 / (len(REFS[0]) + len(REFS[1])))


def test_corpus_rate_is_not_the_mean_of_utterance_rates():
    mean_wer = sum(jiwer.wer(r, h) for r, h in zip(REFS, HYPS, strict=True)) / len(REFS)
    mean_cer = sum(jiwer.cer(r, h) for r, h in zip(REFS, HYPS, strict=True)) / len(REFS)
    assert mean_wer == pytest.approx(0.5) and mean_cer == pytest.approx(0.25)
    assert wer(REFS, HYPS) != pytest.approx(mean_wer)
    assert cer(REFS, HYPS) != pytest.approx(mean_cer)


@pytest.mark.parametrize("refs, hyps", [
    (["a b c d"], ["a x c"]),                           # substitution + deletion
    (["a b"], ["a b c d"]),                             # insertions: WER above 1 is possible
    (["one two three", "four five"], ["one too three", ""]),
    (["it's a test"], ["its a test"]),
])
def test_wer_cer_match_jiwer(refs, hyps):
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))


def test_perfect_and_empty_hypotheses():
    assert wer(REFS, REFS) == 0.0 and cer(REFS, REFS) == 0.0
    assert wer(["a b c"], [""]) == 1.0 and cer(["a b c"], [""]) == 1.0


def test_empty_references():
    # no utterances, or only empty ones decoded as empty: nothing is wrong
    assert wer([], []) == 0.0 and cer([], []) == 0.0
    assert wer([""], [""]) == 0.0 and cer([""], [""]) == 0.0
    # an empty reference next to real ones adds no words, but what is decoded for it is insertions
    # and counts in the corpus total, as jiwer counts it
    refs, hyps = ["", "a b"], ["x", "a b"]
    assert jiwer.wer(refs, hyps) == pytest.approx(0.5) and jiwer.cer(refs, hyps) == pytest.approx(1 / 3)
    assert wer(refs, hyps) == pytest.approx(0.5)
    assert cer(refs, hyps) == pytest.approx(1 / 3)
    assert wer(["", "a b"], ["", "a c"]) == pytest.approx(0.5)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        cer(["a"], ["a", "b"])
