"""Beam-search CTC decoding (torchaudio's flashlight decoder) on hand-built log-probs: lexicon-free it agrees
with greedy on clear input; a lexicon turns near-misses into words; a KenLM n-gram LM built by `asr lm build`
settles what the acoustics leave open; bad settings are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import asr_command, one_line_error, run_cli

from asr.checkpoint import save_checkpoint
from asr.config import DecodeConfig, RecognizerConfig, from_dict
from asr.decoding import BeamSearchDecoder, DecoderError, greedy_decode, make_decoder
from asr.lm import LMError, build_arpa, write_lexicon
from asr.model import SpeechModel
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
    with pytest.raises(DecoderError, match=r"unigram \(order 1\) LM"):
        BeamSearchDecoder(DecodeConfig(lm=str(unigram)))


# ---------------------------------------------------------------------------------------------------------------
# Decoder inputs that could only give empty text, or that KenLM cannot load, are refused in one plain line.

UNIGRAM_ARPA = "\\data\\\nngram 1=4\n\n\\1-grams:\n-1.0\t<s>\n-1.0\t</s>\n-0.5\tthe\n-0.5\tred\n\n\\end\\\n"


def one_plain_line(e: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be one line with no C++ source location in it."""
    message = str(e.value)
    assert "\n" not in message and ".cc:" not in message and "threw" not in message, message
    return message


@pytest.mark.parametrize("with_lm", [False, True])
def test_an_empty_lexicon_is_refused(tmp_path: Path, lm_files, with_lm):
    """Before: no error, and every transcript empty."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DecoderError) as e:
        make_decoder(DecodeConfig(lexicon=str(empty), lm=lm_files[0] if with_lm else ""))
    assert "has no words" in one_plain_line(e)


def test_a_lexicon_of_unspellable_words_is_refused_where_it_is_written(tmp_path: Path):
    """write_lexicon skipped every word it could not spell and wrote an empty lexicon: empty text for any audio."""
    out = tmp_path / "lexicon.txt"
    with pytest.raises(LMError, match="none of the 3 given words can be spelled"):
        write_lexicon(["42", "B2B", "<unk>"], out)
    assert not out.exists()


def test_a_lexicon_line_the_model_cannot_spell_is_named(tmp_path: Path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("the\tt h e |\nüber\tü b e r |\n")
    with pytest.raises(DecoderError) as e:
        make_decoder(DecodeConfig(lexicon=str(lexicon)))
    assert "line 2: 'über' is spelled with 'ü'" in one_plain_line(e)
    lexicon.write_text("the\tt h e |\ncat\n")
    with pytest.raises(DecoderError) as e:
        make_decoder(DecodeConfig(lexicon=str(lexicon)))
    assert "line 2: 'cat' is not a word followed by its spelling" in one_plain_line(e)


def test_a_lexicon_with_a_byte_order_mark_is_read_as_meant(tmp_path: Path, lm_files):
    """A Windows editor's byte order mark is not part of the first word: the decoder read it as `\ufeffred`, a
    word the LM does not know, so the LM could no longer prefer "the red" to "the rad"."""
    arpa, _ = lm_files
    marked = tmp_path / "marked-lexicon.txt"
    write_lexicon(["red", "the", "rad"], marked)
    marked.write_bytes(b"\xef\xbb\xbf" + marked.read_bytes())
    lp = frames(*spell("the"), " ", "_", "r", "_", {"a": 0.5, "e": 0.45}, "_", "d", "_")
    assert decode(make_decoder(DecodeConfig(lm=arpa, lexicon=str(marked), lm_weight=1.0)), lp) == "the red"


@pytest.mark.parametrize("with_lexicon", [False, True])
def test_a_unigram_lm_made_elsewhere_is_refused_with_kenlm_reason(tmp_path: Path, lm_files, with_lexicon):
    """KenLM's own reason ("assumes at least a bigram model") came second, after a C++ location, and was cut off."""
    unigram = tmp_path / "unigram.arpa"
    unigram.write_text(UNIGRAM_ARPA)
    with pytest.raises(DecoderError) as e:
        make_decoder(DecodeConfig(lm=str(unigram), lexicon=lm_files[1] if with_lexicon else ""))
    assert "at least a bigram model" in one_plain_line(e)


def test_a_file_that_is_no_lm_is_refused_in_one_plain_line(tmp_path: Path, lm_files):
    not_lm = tmp_path / "notes.arpa"
    not_lm.write_text("hello world\n")
    with pytest.raises(DecoderError) as e:
        make_decoder(DecodeConfig(lm=str(not_lm), lexicon=lm_files[1]))
    assert "is not an LM" in one_plain_line(e)


def test_kenlm_reason_for_a_broken_arpa_file_is_kept(tmp_path: Path, lm_files):
    """An ARPA file whose header promises more bigrams than it holds: KenLM's reason, not its C++ location."""
    arpa, lexicon = lm_files
    text = Path(arpa).read_text()
    broken = tmp_path / "broken.arpa"
    broken.write_text(text[: text.index("\\3-grams:")].rsplit("\n", 3)[0] + "\n\\end\\\n")
    with pytest.raises(DecoderError) as e:
        make_decoder(DecodeConfig(lm=str(broken), lexicon=lexicon))
    message = one_plain_line(e)
    assert message.startswith("cannot build the beam search decoder") and "Could not parse" in message


def test_a_lexicon_the_lm_knows_no_word_of_is_refused(tmp_path: Path, lm_files):
    """An upper-case LM (LibriSpeech's) with a lower-case lexicon: KenLM scored every word as unknown, silently."""
    arpa, lexicon = lm_files
    upper = tmp_path / "upper.arpa"
    upper.write_text(Path(arpa).read_text().upper().replace("\\DATA\\", "\\data\\").replace("NGRAM", "ngram")
                     .replace("-GRAMS:", "-grams:").replace("\\END\\", "\\end\\").replace("<S>", "<s>")
                     .replace("</S>", "</s>").replace("<UNK>", "<unk>"))
    with pytest.raises(DecoderError) as e:
        make_decoder(DecodeConfig(lm=str(upper), lexicon=lexicon))
    assert "none of its 10 words is in --lm" in one_plain_line(e)
    # the same LM spelling its own (upper-case) words decodes: "THE RED" comes back in the model's lower case
    lp = frames(*spell("the"), " ", "_", *spell("red"))
    assert decode(make_decoder(DecodeConfig(lm=str(upper), lm_weight=1.0)), lp) == "the red"


@pytest.mark.slow  # a CLI subprocess
def test_asr_transcribe_refuses_an_empty_lexicon_in_one_line(tmp_path: Path):
    """Before: exit 0 and an empty transcript."""
    cfg = from_dict(RecognizerConfig, {"rnn_dim": 16, "rnn_layers": 1, "cnn_channels": 4})
    checkpoint = save_checkpoint(tmp_path / "model.pt", cfg, SpeechModel.from_config(cfg, len(VOCAB)))
    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_cli(asr_command() + ["transcribe", "--model-uri", str(checkpoint), "--lexicon", str(empty), str(wav)],
                   cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert "has no words" in proc.stderr and proc.stdout == ""
