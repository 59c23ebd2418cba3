"""CTC decoding of the model's per-frame log-probabilities into text.

Greedy (best path) is the default: it is what training validates with and it costs nothing. Beam search runs
through torchaudio's flashlight-text decoder, optionally constrained to a lexicon and scored by a KenLM n-gram
LM; that is what turns a character model's near-misses into real words.
"""

from __future__ import annotations

import codecs
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from asr import UserError, first_line
from asr.config import DecodeConfig
from asr.text import BLANK, VOCAB, decode

Decoder = Callable[[torch.Tensor, torch.Tensor], list[str]]

# flashlight's token names for our vocabulary, index for index: blank, word boundary, apostrophe, letters.
TOKENS = ["-", "|", *VOCAB[2:]]


class DecoderError(UserError):
    """A decoder setting that cannot work (missing LM or lexicon file, unreadable LM)."""


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Best path: argmax per frame, merge repeats, drop blanks. log_probs is (B, T, C)."""
    best = log_probs.argmax(dim=-1).cpu()
    texts = []
    for seq, n in zip(best, lengths.tolist(), strict=True):
        seq = torch.unique_consecutive(seq[:n]).tolist()
        texts.append(" ".join(decode([i for i in seq if i != BLANK]).split()))
    return texts


class BeamSearchDecoder:
    """CTC prefix beam search (flashlight-text), with an optional lexicon and KenLM LM.

    Settings that could only decode to empty text, or that KenLM cannot load, are refused here, in one line,
    before the decoder is built: an empty lexicon, a lexicon line spelled with characters the model cannot emit,
    a unigram LM, a file that is no LM, a lexicon none of whose words the LM knows."""

    def __init__(self, cfg: DecodeConfig):
        from torchaudio.models.decoder import ctc_decoder

        lexicon = self._lexicon(cfg)
        try:
            with _quiet_stderr():  # KenLM draws a progress bar and binary-format advice on fd 2 as it loads
                self._decoder = ctc_decoder(
                    lexicon=lexicon, tokens=TOKENS, lm=cfg.lm or None, beam_size=cfg.beam_size,
                    beam_threshold=cfg.beam_threshold, lm_weight=cfg.lm_weight, word_score=cfg.word_score,
                    sil_score=0.0, blank_token=TOKENS[BLANK], sil_token="|")
        except (RuntimeError, ValueError) as e:
            raise DecoderError(f"cannot build the beam search decoder (lm {cfg.lm or 'none'}, lexicon "
                               f"{lexicon or 'none'}): {kenlm_reason(e)}") from None

    def _lexicon(self, cfg: DecodeConfig) -> str | None:
        """The lexicon file to use; an LM without one gets a lexicon of its own unigrams (built once, in a
        temporary folder), since a word LM can only score words the decoder can spell."""
        from asr.lm import LMError, write_lexicon

        for name, path in (("lm", cfg.lm), ("lexicon", cfg.lexicon)):
            if path and not Path(path).is_file():
                raise DecoderError(f"--{name} {path}: no such file")
        lm_words = _lm_words(cfg.lm) if cfg.lm else None
        if cfg.lexicon:
            words = read_lexicon(cfg.lexicon)
            if lm_words is not None and not words & set(lm_words):
                raise DecoderError(f"--lexicon {cfg.lexicon}: none of its {len(words)} words is in --lm {cfg.lm}, so "
                                   "the LM would score every word as unknown (upper case in one, lower case in the "
                                   "other?); leave out --lexicon to spell the LM's own words")
            return self._without_bom(cfg.lexicon)
        if lm_words is None:
            if cfg.lm:
                raise DecoderError(f"--lm {cfg.lm} is a binary KenLM model, which has no readable word list: pass "
                                   "--lexicon too")
            return None
        self._tmp = tempfile.TemporaryDirectory(prefix="asr-lexicon-")
        out = Path(self._tmp.name) / "lexicon.txt"
        try:
            write_lexicon(lm_words, out)
        except LMError:
            raise DecoderError(f"--lm {cfg.lm}: none of its words can be spelled with this model's characters "
                               "(a-z and '), so it could only decode to empty text") from None
        return str(out)

    def _without_bom(self, lexicon: str) -> str:
        """The lexicon itself, or a copy without the UTF-8 byte order mark that Windows editors put first: the
        decoder reads the file itself and would take the mark as part of the first word."""
        raw = Path(lexicon).read_bytes()
        if not raw.startswith(codecs.BOM_UTF8):
            return lexicon
        self._tmp = tempfile.TemporaryDirectory(prefix="asr-lexicon-")
        out = Path(self._tmp.name) / "lexicon.txt"
        out.write_bytes(raw[len(codecs.BOM_UTF8):])
        return str(out)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        emissions = log_probs.detach().float().cpu().contiguous()
        hypotheses = self._decoder(emissions, lengths.cpu().to(torch.int32))
        return [" ".join(decode(h[0].tokens.tolist()).split()) if h else "" for h in hypotheses]


def _lm_words(path: str) -> list[str] | None:
    """The unigrams of an ARPA LM, None for a KenLM binary model. Raises DecoderError for an LM KenLM cannot
    load: a unigram model, a file that is neither ARPA nor KenLM binary."""
    from asr.lm import LMError, NotArpaError, arpa_order, arpa_words, is_kenlm_binary

    try:
        if is_kenlm_binary(path):
            return None
        order = arpa_order(path)
        words = arpa_words(path)
    except NotArpaError:
        raise DecoderError(f"--lm {path} is not an LM: neither an ARPA file (no \\data\\ line near its start) nor a "
                           "KenLM binary model") from None
    except (LMError, OSError, EOFError) as e:  # OSError, EOFError: a corrupt or truncated .gz
        raise DecoderError(f"--lm {path}: cannot read it as an ARPA LM: {first_line(e)}") from None
    if order < 2:
        raise DecoderError(f"--lm {path} is a unigram (order 1) LM, and the decoder's KenLM assumes at least a bigram "
                           "model: build one of order 2 or more (asr lm build --order 2)")
    return words


def read_lexicon(path: str) -> set[str]:
    """The words of a flashlight lexicon file (`word<TAB>s p e l l i n g |` per line), checked the way the decoder
    will use them. Raises DecoderError naming the line for a line without a spelling or spelled with a
    character the model cannot emit, and for a file with no words (it could only decode to empty text)."""
    words: set[str] = set()
    known = set(TOKENS)
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte order mark is not part of the first word
            for number, line in enumerate(f, 1):
                word, *spelling = line.split()
                if not spelling:
                    raise DecoderError(f"--lexicon {path} line {number}: {line.strip()!r} is not a word followed by "
                                       "its spelling, e.g. `cat<TAB>c a t |`")
                if unknown := sorted(set(spelling) - known):
                    raise DecoderError(f"--lexicon {path} line {number}: {word!r} is spelled with {unknown[0]!r}, "
                                       "which this model cannot emit (it has a-z, ' and the word boundary |)")
                words.add(word)
    except UnicodeDecodeError:
        raise DecoderError(f"--lexicon {path} is not UTF-8 text") from None
    except ValueError:  # an empty line: no word at all
        raise DecoderError(f"--lexicon {path} line {number} is empty: every line is a word followed by its "
                           "spelling, e.g. `cat<TAB>c a t |`") from None
    if not words:
        raise DecoderError(f"--lexicon {path} has no words, so the decoder could only produce empty text: give one "
                           "word per line with its spelling (`asr lm build --lexicon` writes one)")
    return words


def kenlm_reason(e: BaseException) -> str:
    """KenLM's reason for refusing a file, without the C++ source location it puts first ("lm/model.cc:100 in
    void lm::ngram::...threw FormatLoadException."), which is all that one line would otherwise keep."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "threw" in lines[0]:
        return " ".join(lines[1:])
    return first_line(e)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences file descriptor 2 (C++ libraries write there directly, past sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def make_decoder(cfg: DecodeConfig) -> Decoder:
    """The decoder the settings ask for: beam search when asked for, or when an LM or lexicon is given."""
    if cfg.decoder == "beam" or cfg.lm or cfg.lexicon:
        return BeamSearchDecoder(cfg)
    return greedy_decode
