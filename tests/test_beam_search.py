"""Beam-search CTC decoding (torchaudio's flashlight decoder) on hand-built log-probs: lexicon-free it agrees
with greedy on clear input; a lexicon turns near-misses into words; a KenLM n-gram LM built by `asr lm build`
settles what the acoustics leave open; bad settings are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asr.config import DecodeConfig
from asr.decoding import BeamSearchDecoder, DecoderError, greedy_decode, make_decoder
from asr.lm import build_arpa, write_lexicon
from asr.text import BLANK, VOCAB

IDX = {ch: i for i, ch in enumerate(VOCAB)}


def frames(*specs: str | dict[str, float]) -> torch.Tensor:
    """(1, T, C) log-probs, one frame per spec: a character ('_' = blank) or {character: probability}; the
    rest of each frame's mass is spread over the other symbols."""
    probs = torch.full((len(specs), len(VOCAB)), 1e-4)
    for t, spec in enumerate(specs):
        for ch, p in ({spec: 0.99} if isinstance(spec, str) else spec).items():
            probs[t, BLANK if ch == "_" else IDX[ch]] = p
    probs /= probs.sum(dim=-1, keepdim=True)
    return probs.log()[None]


def spell(text: str) -> list[str]:
    """Frames that spell `text` clearly: each character, then a blank."""
    return [f for ch in text for f in (ch, "_")]


def decode(decoder, lp: torch.Tensor) -> str:
    return decoder(lp, torch.tensor([lp.shape[1]]))[0]


@pytest.fixture
def lm_files(tmp_path: Path) -> tuple[str, str]:
    """A trigram LM where 'red' follows 'the' often and 'rad' rarely, and its lexicon."""
    text = ["the red car"] * 30 + ["the red house"] * 10 + ["a rad idea"] * 2 + ["the cat sat"] * 5
    arpa = tmp_path / "lm.arpa"
    build_arpa(text, 3, arpa)
    lexicon = tmp_path / "lexicon.txt"
    write_lexicon(["the", "red", "rad", "car", "house", "a", "idea", "cat", "sat", "kit"], lexicon)
    return str(arpa), str(lexicon)


def test_lexicon_free_beam_search_agrees_with_greedy_on_clear_input():
    lp = frames(*spell("it's a dog"), "_", *spell(" okay"))
    beam = BeamSearchDecoder(DecodeConfig(decoder="beam", beam_size=8))
    assert decode(beam, lp) == decode(greedy_decode, lp) == "it's a dog okay"


def test_beam_search_respects_lengths_in_a_padded_batch():
    a, b = frames(*spell("the cat")), frames(*spell("sat"))
    padded = torch.cat([a, torch.cat([b, frames(*["z"] * (a.shape[1] - b.shape[1]))], dim=1)])
    beam = BeamSearchDecoder(DecodeConfig(decoder="beam"))
    assert beam(padded, torch.tensor([a.shape[1], b.shape[1]])) == ["the cat", "sat"]


def test_lexicon_turns_a_near_miss_into_a_word(lm_files):
    _, lexicon = lm_files
    # greedy hears "kat": 'k' narrowly beats 'c'; the lexicon has "cat" and "kit" but no "kat"
    lp = frames(*spell("the"), " ", "_", {"k": 0.5, "c": 0.45}, "_", "a", "_", "t", "_")
    assert decode(greedy_decode, lp) == "the kat"
    assert decode(make_decoder(DecodeConfig(lexicon=lexicon)), lp) == "the cat"


def test_language_model_settles_what_the_acoustics_leave_open(lm_files):
    arpa, lexicon = lm_files
    # 'a' narrowly beats 'e': acoustically "rad", but after "the" the LM has seen "red" 40 times
    lp = frames(*spell("the"), " ", "_", "r", "_", {"a": 0.5, "e": 0.45}, "_", "d", "_")
    assert decode(greedy_decode, lp) == "the rad"
    assert decode(make_decoder(DecodeConfig(lexicon=lexicon)), lp) == "the rad"
    with_lm = make_decoder(DecodeConfig(lm=arpa, lexicon=lexicon, lm_weight=1.0))
    assert decode(with_lm, lp) == "the red"
    # without --lexicon the decoder spells the LM's own vocabulary
    assert decode(make_decoder(DecodeConfig(lm=arpa, lm_weight=1.0)), lp) == "the red"
    # weight 0 is the lexicon decoder again
    assert decode(make_decoder(DecodeConfig(lm=arpa, lexicon=lexicon, lm_weight=0.0)), lp) == "the rad"


def test_word_score_trades_insertions(lm_files):
    arpa, lexicon = lm_files
    # "a" then "cat": a strong negative word score merges or drops words, a positive one keeps both
    lp = frames(*spell("a"), " ", "_", *spell("cat"))
    keep = make_decoder(DecodeConfig(lm=arpa, lexicon=lexicon, lm_weight=0.5, word_score=2.0))
    assert decode(keep, lp) == "a cat"
    drop = make_decoder(DecodeConfig(lm=arpa, lexicon=lexicon, lm_weight=0.5, word_score=-40.0))
    assert len(decode(drop, lp).split()) < 2


def test_greedy_stays_the_default():
    assert make_decoder(DecodeConfig()) is greedy_decode
    assert isinstance(make_decoder(DecodeConfig(decoder="beam")), BeamSearchDecoder)


def test_bad_decoder_settings_are_one_line_errors(tmp_path: Path, lm_files):
    arpa, _ = lm_files
    with pytest.raises(DecoderError, match="no such file"):
        BeamSearchDecoder(DecodeConfig(lm=str(tmp_path / "missing.arpa")))
    with pytest.raises(DecoderError, match="no such file"):
        BeamSearchDecoder(DecodeConfig(lm=arpa, lexicon=str(tmp_path / "missing.txt")))
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0" + bytes(64))
    with pytest.raises(DecoderError, match="--lexicon"):
        BeamSearchDecoder(DecodeConfig(lm=str(binary)))
    unigram = tmp_path / "unigram.arpa"
    build_arpa(["the red car"], 1, unigram)
    with pytest.raises(DecoderError, match="cannot build"):
        BeamSearchDecoder(DecodeConfig(lm=str(unigram)))
