"""The decoder a trained model carries, decided once training is done: its word LM (given, or built from the
training transcripts), the LM weight and word score tuned on the dev split (`asr lm tune`'s grid, one acoustic
pass), and the dev and test scores of greedy decoding and of that decoder, computed the way the model is served
(asr.transcribe.Transcriber): the dev WER that promotion compares is the one of what the version will serve, and
the transcripts behind those scores are kept, per utterance, for the run's predictions tables.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from asr.config import DecodeConfig
from asr.data.dataset import Utterance
from asr.decoding import check_lm, describe, write_model_decoder
from asr.evaluation.evaluate import grid_search, outputs_of
from asr.lm import build_arpa
from asr.metrics import cer, wer
from asr.settings import DecoderSection, TrainConfig
from asr.text import TextNormalizer
from asr.transcribe import Transcriber
from asr.vocabulary import Vocabulary

LEXICON_FILE = "lexicon.txt"  # a given lexicon, as the model carries it


def check(cfg: DecoderSection, vocabulary: Vocabulary | None) -> None:
    """Refuses, before any data is read, an LM or lexicon the decoder could not use (DecoderError): a unigram LM,
    a file that is no LM, a binary LM without a lexicon, a lexicon none of whose words the LM knows, or one spelled
    with characters outside `vocabulary` (None: learned from the data later, not checked here). Reads the LM's
    header and words, not the whole LM."""
    if cfg.lm or cfg.lexicon:
        check_lm(DecodeConfig(decoder="beam", lm=cfg.lm, lexicon=cfg.lexicon), vocabulary)


@dataclass
class Decoding:
    """The model's own decoder and how it and greedy decoding score."""
    config: DecodeConfig            # what the model decodes with by default (DecodeConfig() = greedy)
    description: str                # e.g. "beam+lm(order 3)" or "greedy"
    files: dict[str, Path]          # artifacts: decoder (decoder.json), lm, lexicon; {} for greedy
    dev: dict[str, float]           # wer, cer (the model's decoder), wer_greedy, cer_greedy
    test: dict[str, float] = field(default_factory=dict)  # the same on the test split; {} without one
    grid: list[dict] = field(default_factory=list)        # the tuning grid (lm_weight, word_score, wer, cer)
    # per split ("dev", "test"), by file id: what `dev` and `test` score (see PREDICTION_COLUMNS)
    predictions: dict[str, list[dict[str, str]]] = field(default_factory=dict)


# A predictions row: the utterance, its normalized transcript, the model's decoder's text and greedy decoding's.
PREDICTION_COLUMNS = ("file_id", "target", "prediction", "prediction_greedy")


def attach(cfg: TrainConfig, model: nn.Module, out_dir: Path, train: list[Utterance], dev: list[Utterance],
           test: list[Utterance], progress: bool = False, say: Callable[[str], None] = print,
           text: TextNormalizer | None = None) -> Decoding:
    """Decides the decoder of the trained `model` (its final weights): with an LM, writes the LM (built from the
    `train` transcripts, or the given one), the lexicon and decoder.json into `out_dir`, with the LM weight and
    word score that score best on `dev`; then scores greedy decoding and that decoder on dev and `test`, keeping
    both transcripts of every utterance scored (Decoding.predictions). `text` is the model's normalization (default
    English): the LM's sentences and the references are normalized as its labels were."""
    transcriber = Transcriber(cfg.recognizer(), model, text=text or TextNormalizer())
    unreadable: list[str] = []
    emissions, references, scored = outputs_of(transcriber, dev, progress, "dev (decoder)", unreadable)
    greedy = DecodeConfig()
    own, files, grid, order = greedy, {}, [], None
    if cfg.decoder.attached:
        lm, lexicon, order = lm_files(cfg.decoder, out_dir, train, say, transcriber.text)
        base = DecodeConfig(decoder="beam", beam_size=cfg.decoder.beam_size,
                            beam_threshold=cfg.decoder.beam_threshold, lm=str(lm),
                            lexicon=str(lexicon) if lexicon else "")
        best, grid = grid_search(transcriber, emissions, references, base, cfg.decoder.lm_weights,
                                 cfg.decoder.word_scores, progress)
        own = dataclasses.replace(base, lm_weight=best["lm_weight"], word_score=best["word_score"])
        files = {"decoder": write_model_decoder(own, out_dir, order), "lm": lm}
        if lexicon:
            files["lexicon"] = lexicon
    transcriber.configure(own)
    decoding = Decoding(own, describe(own, order), files, {}, grid=grid)
    decoding.dev, decoding.predictions["dev"] = _scores(transcriber, emissions, references, scored)
    if test:
        decoding.test, decoding.predictions["test"] = _scores(
            transcriber, *outputs_of(transcriber, test, progress, "test (decoder)", unreadable))
    return decoding


def _scores(transcriber: Transcriber, emissions: list, references: list[str], utts: list[Utterance]
            ) -> tuple[dict[str, float], list[dict[str, str]]]:
    """WER and CER of the transcriber's decoder and of greedy decoding on the same model outputs (those of `utts`),
    and the predictions rows they are computed from, by file id."""
    own = transcriber.decode(emissions)
    greedy = transcriber.decode(emissions, transcriber.decoder_for(DecodeConfig()))
    rows = [dict(zip(PREDICTION_COLUMNS, values, strict=True))
            for values in zip([u.file_id for u in utts], references, own, greedy, strict=True)]
    return ({"wer": wer(references, own), "cer": cer(references, own), "wer_greedy": wer(references, greedy),
             "cer_greedy": cer(references, greedy)}, sorted(rows, key=lambda row: row["file_id"]))


def lm_files(cfg: DecoderSection, out_dir: Path, train: list[Utterance], say: Callable[[str], None],
             text: TextNormalizer) -> tuple[Path, Path | None, int | None]:
    """(LM, lexicon or None, the LM's order when built here) in `out_dir`: the given LM and lexicon linked or
    copied there, or an LM of cfg.lm_order built from the training transcripts (normalized by `text`)."""
    lexicon = _place(Path(cfg.lexicon), out_dir / LEXICON_FILE) if cfg.lexicon else None
    if cfg.lm:
        given = Path(cfg.lm)
        return _place(given, out_dir / f"lm{''.join(given.suffixes[-2:])}"), lexicon, None
    out = out_dir / "lm.arpa"
    summary = build_arpa((text.normalized(u.transcript) for u in train), cfg.lm_order, out)
    say(f"LM: order {summary['order']}, {summary['vocab']} words, n-grams {summary['ngrams']}, from the "
        f"{summary['sentences']} training transcripts")
    return out, lexicon, cfg.lm_order


def _place(source: Path, dest: Path) -> Path:
    """`source` at `dest`: a hard link where the file system allows (an LM can take gigabytes), else a copy; the
    name appears only once the file is complete (a resumed run places it again)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)
    return dest
