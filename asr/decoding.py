"""CTC decoding of the model's per-frame log-probabilities into text.

Greedy (best path) is the default: it is what training validates with and it costs nothing. Beam search runs
through torchaudio's flashlight-text decoder, optionally constrained to a lexicon and scored by a KenLM n-gram
LM; that is what turns a character model's near-misses into real words.
"""

from __future__ import annotations

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
    """CTC prefix beam search (flashlight-text), with an optional lexicon and KenLM LM."""

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
                               f"{lexicon or 'none'}): {first_line(e)}") from None

    def _lexicon(self, cfg: DecodeConfig) -> str | None:
        """The lexicon file to use; an LM without one gets a lexicon of its own unigrams (built once, in a
        temporary folder), since a word LM can only score words the decoder can spell."""
        from asr.lm import LMError, arpa_words, write_lexicon

        for name, path in (("lm", cfg.lm), ("lexicon", cfg.lexicon)):
            if path and not Path(path).is_file():
                raise DecoderError(f"--{name} {path}: no such file")
        if cfg.lexicon or not cfg.lm:
            return cfg.lexicon or None
        try:
            words = arpa_words(cfg.lm)
        except (LMError, UnicodeDecodeError, OSError) as e:
            raise DecoderError(f"--lm {cfg.lm}: cannot read its vocabulary ({e}); for a binary KenLM model "
                               "pass --lexicon too") from None
        self._tmp = tempfile.TemporaryDirectory(prefix="asr-lexicon-")
        out = Path(self._tmp.name) / "lexicon.txt"
        if write_lexicon(words, out) == 0:
            raise DecoderError(f"--lm {cfg.lm}: none of its words can be spelled with this model's characters")
        return str(out)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        emissions = log_probs.detach().float().cpu().contiguous()
        hypotheses = self._decoder(emissions, lengths.cpu().to(torch.int32))
        return [" ".join(decode(h[0].tokens.tolist()).split()) if h else "" for h in hypotheses]


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
