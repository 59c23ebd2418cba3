"""CTC decoding of the model's per-frame log-probabilities into text, and the decoder a trained model carries.

Greedy (best path) is what training validates with and it costs nothing. Beam search runs through torchaudio's
flashlight-text decoder, optionally constrained to a lexicon and scored by a KenLM n-gram LM; that is what turns
a character model's near-misses into real words. A model trained with an LM carries its own decoder: the LM, the
lexicon (if any) and `decoder.json` (beam settings and the LM weight and word score tuned on dev), which every way
of loading it decodes with unless told otherwise (`with_overrides`); a model without one decodes greedily.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import json
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from asr import UserError, first_line
from asr.config import DecodeConfig, from_dict
from asr.text import BLANK, ENGLISH_TEXT, TextNormalizer
from asr.vocabulary import ENGLISH, SPACE, Vocabulary

DECODER_FILE = "decoder.json"  # a model's own decoder settings, next to its checkpoint and LM
# The settings that make a decoder (the other DecodeConfig settings say how audio reaches the model).
DECODER_SETTINGS = ("decoder", "beam_size", "beam_threshold", "lm", "lexicon", "lm_weight", "word_score")

Decoder = Callable[[torch.Tensor, torch.Tensor], list[str]]


def tokens(vocabulary: Vocabulary) -> list[str]:
    """flashlight's token names for a vocabulary, index for index: the blank is -, the word boundary (space) |,
    every other symbol itself."""
    return ["-" if i == BLANK else "|" if ch == SPACE else ch for i, ch in enumerate(vocabulary.symbols)]


TOKENS = tokens(ENGLISH)  # the English default's: blank, word boundary, apostrophe, letters


class DecoderError(UserError):
    """A decoder setting that cannot work (missing LM or lexicon file, unreadable LM)."""


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, vocabulary: Vocabulary = ENGLISH) -> list[str]:
    """Best path: argmax per frame, merge repeats, drop blanks. log_probs is (B, T, C), C = len(vocabulary)."""
    best = log_probs.argmax(dim=-1).cpu()
    texts = []
    for seq, n in zip(best, lengths.tolist(), strict=True):
        seq = torch.unique_consecutive(seq[:n]).tolist()
        texts.append(" ".join(vocabulary.decode(seq).split()))
    return texts


class BeamSearchDecoder:
    """CTC prefix beam search (flashlight-text), with an optional lexicon and KenLM LM (see LoadedLM for what is
    refused, in one line, before the decoder is built)."""

    def __init__(self, cfg: DecodeConfig, text: TextNormalizer = ENGLISH_TEXT):
        from torchaudio.models.decoder import ctc_decoder

        loaded = loaded_lm(cfg, text)  # shared by every decoder of this LM and lexicon: loaded once per process
        self.vocabulary = text.vocabulary
        names = tokens(text.vocabulary)
        try:
            with _quiet_stderr():
                self._decoder = ctc_decoder(
                    lexicon=loaded.lexicon, tokens=names, lm=loaded.lm, beam_size=cfg.beam_size,
                    beam_threshold=cfg.beam_threshold, lm_weight=cfg.lm_weight, word_score=cfg.word_score,
                    sil_score=0.0, blank_token=names[BLANK], sil_token="|")
        except (RuntimeError, ValueError) as e:
            raise DecoderError(f"cannot build the beam search decoder (lm {cfg.lm or 'none'}, lexicon "
                               f"{loaded.lexicon or 'none'}): {kenlm_reason(e)}") from None
        self.loaded = loaded  # keeps the LM, and the lexicon's temporary folder, alive as long as this decoder
        # flashlight's decoder keeps the hypotheses of the utterance it is decoding in itself, and MLflow's scoring
        # server runs concurrent requests in threads: one utterance at a time per decoder
        self._lock = threading.Lock()

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        emissions = log_probs.detach().float().cpu().contiguous()
        with self._lock:
            hypotheses = self._decoder(emissions, lengths.cpu().to(torch.int32))
        return [" ".join(self.vocabulary.decode(h[0].tokens.tolist()).split()) if h else "" for h in hypotheses]


class LoadedLM:
    """A KenLM LM and the lexicon the decoder spells words with, loaded once and shared by the decoders that
    differ only in beam settings, LM weight or word score: torchaudio fixes those when a decoder is built, so a new
    setting needs a new decoder, but not a new LM (an 800 MB ARPA 4-gram takes 20-45 s and 0.8 GB: `asr bench lm`).

    Settings that could only decode to empty text, or that KenLM cannot load, are refused here, in one line: an
    empty lexicon, a lexicon line spelled with characters the model cannot emit, a unigram LM, a file that is no
    LM, a lexicon none of whose words the LM knows."""

    def __init__(self, cfg: DecodeConfig, text: TextNormalizer = ENGLISH_TEXT):
        self.lexicon = self._lexicon(cfg, text)
        self.lm = None
        if cfg.lm:
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import create_word_dict, load_words

            try:
                with _quiet_stderr():  # KenLM draws a progress bar and binary-format advice on fd 2 as it loads
                    # words indexed as torchaudio's ctc_decoder indexes the same lexicon
                    self.lm = KenLM(cfg.lm, create_word_dict(load_words(self.lexicon)))
            except (RuntimeError, ValueError) as e:
                raise DecoderError(f"cannot build the beam search decoder (lm {cfg.lm}, lexicon {self.lexicon}): "
                                   f"{kenlm_reason(e)}") from None

    def _lexicon(self, cfg: DecodeConfig, text: TextNormalizer) -> str | None:
        """The lexicon file to use; an LM without one gets a lexicon of its own unigrams spelled in the model's
        characters (built once, in a temporary folder), since a word LM can only score words the decoder can
        spell."""
        from asr.lm import LMError, write_lexicon

        lm_words = check_lm(cfg, text.vocabulary)
        if cfg.lexicon:
            return self._without_bom(cfg.lexicon)
        if lm_words is None:
            return None
        self._tmp = tempfile.TemporaryDirectory(prefix="asr-lexicon-")
        out = Path(self._tmp.name) / "lexicon.txt"
        try:
            write_lexicon(lm_words, out, text)
        except LMError:
            raise DecoderError(f"--lm {cfg.lm}: none of its words can be spelled with this model's characters "
                               f"({text.vocabulary.describe()}), so it could only decode to empty text") from None
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


# LMs kept loaded, by their files (path, size and modification time of LM and lexicon), most recently used last:
# the few a process decodes with (a served model's own, one being tuned).
_LOADED: OrderedDict[tuple, LoadedLM] = OrderedDict()
_LOADING = threading.Lock()  # one load at a time: two requests asking for one LM load it once
LOADED_LMS = 2


def loaded_lm(cfg: DecodeConfig, text: TextNormalizer = ENGLISH_TEXT) -> LoadedLM:
    """The LoadedLM of cfg's LM and lexicon for a model of `text`'s vocabulary (which spells the LM's words when
    there is no lexicon), loaded now or earlier in this process (a file changed since is loaded again). Raises
    DecoderError as LoadedLM does."""
    key = (*((path, *_stamp(path)) for path in (cfg.lm, cfg.lexicon)), text)
    with _LOADING:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        loaded = _LOADED[key] = LoadedLM(cfg, text)
        while len(_LOADED) > LOADED_LMS:
            _LOADED.popitem(last=False)
        return loaded


def _stamp(path: str) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:  # no file, or none given: LoadedLM says what is wrong
        return (0, 0)
    return (info.st_size, info.st_mtime_ns)


def check_lm(cfg: DecodeConfig, vocabulary: Vocabulary | None = ENGLISH) -> list[str] | None:
    """Checks the LM and lexicon files as the decoder will use them, without loading the LM (seconds, whatever its
    size); returns the LM's words when the decoder must spell them itself (an ARPA LM, no lexicon), else None.
    Raises DecoderError for files that cannot work together, or a lexicon spelled with characters outside
    `vocabulary` (None: a vocabulary not known yet, learned from the training data; not checked)."""
    for name, path in (("lm", cfg.lm), ("lexicon", cfg.lexicon)):
        if path and not Path(path).is_file():
            raise DecoderError(f"--{name} {path}: no such file")
    lm_words = _lm_words(cfg.lm) if cfg.lm else None
    if cfg.lexicon:
        words = read_lexicon(cfg.lexicon, vocabulary)
        if lm_words is not None and not words & set(lm_words):
            raise DecoderError(f"--lexicon {cfg.lexicon}: none of its {len(words)} words is in --lm {cfg.lm}, so "
                               "the LM would score every word as unknown (upper case in one, lower case in the "
                               "other?); leave out --lexicon to spell the LM's own words")
        return None
    if cfg.lm and lm_words is None:
        raise DecoderError(f"--lm {cfg.lm} is a binary KenLM model, which has no readable word list: pass "
                           "--lexicon too")
    return lm_words


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


def read_lexicon(path: str, vocabulary: Vocabulary | None = ENGLISH) -> set[str]:
    """The words of a flashlight lexicon file (`word<TAB>s p e l l i n g |` per line), checked the way the decoder
    will use them. Raises DecoderError naming the line for a line without a spelling or spelled with a
    character the model (of `vocabulary`) cannot emit, and for a file with no words (it could only decode to empty
    text; None: any character)."""
    words: set[str] = set()
    known = set(tokens(vocabulary)) if vocabulary is not None else None
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte order mark is not part of the first word
            for number, line in enumerate(f, 1):
                word, *spelling = line.split()
                if not spelling:
                    raise DecoderError(f"--lexicon {path} line {number}: {line.strip()!r} is not a word followed by "
                                       "its spelling, e.g. `cat<TAB>c a t |`")
                if known is not None and (unknown := sorted(set(spelling) - known)):
                    raise DecoderError(f"--lexicon {path} line {number}: {word!r} is spelled with {unknown[0]!r}, "
                                       f"which this model cannot emit (it has {vocabulary.describe()} and the word "
                                       "boundary |)")
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


def make_decoder(cfg: DecodeConfig, text: TextNormalizer = ENGLISH_TEXT) -> Decoder:
    """The decoder the settings ask for, for a model of `text`'s vocabulary (which also spells the LM's words when
    there is no lexicon): beam search when asked for, or when an LM or lexicon is given, else greedy."""
    if cfg.decoder == "beam" or cfg.lm or cfg.lexicon:
        return BeamSearchDecoder(cfg, text)
    if text.vocabulary == ENGLISH:
        return greedy_decode
    return functools.partial(greedy_decode, vocabulary=text.vocabulary)


def check_request(given: Mapping[str, Any]) -> None:
    """Refuses decoder settings that contradict each other, as given by a user or a request (before any model or
    audio is read): `decoder=greedy` with an LM or a lexicon, which would need beam search. Raises DecoderError
    naming both."""
    if given.get("decoder") != "greedy":
        return
    if clash := [name for name in ("lm", "lexicon") if given.get(name)]:
        named = " and ".join(f"--{name} {given[name]}" for name in clash)
        raise DecoderError(f"--decoder greedy contradicts {named} (an LM or lexicon needs beam search): leave out "
                           f"--decoder greedy to decode with {'them' if len(clash) > 1 else 'it'}, or "
                           f"{' and '.join('--' + name for name in clash)} to decode greedily")


def with_overrides(own: DecodeConfig, given: Mapping[str, Any]) -> DecodeConfig:
    """A model's own decoding (`own`) with the settings a user or a request gave on top. `decoder=greedy` drops the
    model's LM and lexicon (either would imply beam search); a new LM without a lexicon drops the model's lexicon
    (spelled for the model's LM, not the new one). Raises DecoderError for settings that contradict each other
    (check_request), ConfigError for a value that cannot work."""
    check_request(given)
    values = dict(given)
    if values.get("decoder") == "greedy":
        values.update(lm="", lexicon="")
    if values.get("lm") and "lexicon" not in values:
        values["lexicon"] = ""
    return dataclasses.replace(own, **values)


def decoder_key(cfg: DecodeConfig) -> tuple:
    """What tells two decoders apart: equal keys, interchangeable decoders."""
    if not (cfg.decoder == "beam" or cfg.lm or cfg.lexicon):
        return ("greedy",)
    return tuple(getattr(cfg, name) for name in DECODER_SETTINGS)


def describe(cfg: DecodeConfig, lm_order: int | None = None) -> str:
    """The decoder in a few words, e.g. "beam+lm(order 3)", "beam+lm", "beam" or "greedy"."""
    if not (cfg.decoder == "beam" or cfg.lm or cfg.lexicon):
        return "greedy"
    if not cfg.lm:
        return "beam+lexicon" if cfg.lexicon else "beam"
    return f"beam+lm(order {lm_order})" if lm_order else "beam+lm"


def write_model_decoder(cfg: DecodeConfig, folder: Path, lm_order: int | None = None) -> Path:
    """Writes `folder`/decoder.json: `cfg`'s decoder settings, its LM and lexicon by file name (they are expected
    in `folder` too, so the folder, or the model's artifacts, carry the whole decoder)."""
    values: dict[str, Any] = {name: getattr(cfg, name) for name in DECODER_SETTINGS}
    values.update(lm=Path(cfg.lm).name if cfg.lm else "", lexicon=Path(cfg.lexicon).name if cfg.lexicon else "",
                  lm_order=lm_order, description=describe(cfg, lm_order))
    path = folder / DECODER_FILE
    path.write_text(json.dumps(values, indent=2) + "\n")
    return path


def read_model_decoder(path: str | Path, lm: str | None = None, lexicon: str | None = None) -> DecodeConfig:
    """The decoding a model's decoder.json describes; its LM and lexicon are the given paths (a pyfunc model's
    artifacts) or, when not given, the files it names in its own folder. Raises DecoderError for a file that
    cannot be read as one."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise DecoderError(f"{path}: cannot read the model's decoder settings: {first_line(e)}") from None
    for name, given in (("lm", lm), ("lexicon", lexicon)):
        values[name] = given if given is not None else str(path.parent / values[name]) if values.get(name) else ""
    return from_dict(DecodeConfig, values)
