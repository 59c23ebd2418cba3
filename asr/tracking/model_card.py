"""The model card a registered model version carries as its description (MLflow's version `description`, which the
registry UI renders as Markdown): what the model is, what it hears, what it was trained and scored on, how well
with each decoder, how it decodes, and the commands that use that very version.

`render` turns plain facts into the card and touches no store, so it is tested on its own; asr.training.train
gathers the facts of a finished run and sets the card on the version it registered.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from asr.config import DecodeConfig, FeatureConfig, ModelConfig
from asr.tracking.lineage import audio_length, counted

ARTIFACT = "model_card.md"  # the card as a run artifact too
SERVE_PORT = 5001           # the port the card's serving commands use (as the README's do)


@dataclass
class SplitRow:
    """One split folder the run used, as its MLflow dataset input holds it."""
    split: str                   # train, dev or test
    folder: str                  # the dataset's name, e.g. LibriSpeech/dev-clean
    digest: str                  # asr.data.dataset.split_digest of its utterances
    utterances: int
    speakers: int                # distinct speaker ids (the first field of a file id)
    hours: float                 # audio


@dataclass
class TrainingFacts:
    """How long the run trained, and on what."""
    epochs: int                  # epochs run (fewer than max_epochs after an early stop)
    max_epochs: int
    best_epoch: int              # the epoch whose weights the version holds
    seconds: float               # wall time from set-up to registration, the parts of a resumed run summed
    device: str                  # torch device type: cpu, cuda, ...
    hardware: str                # CPU model or GPU name
    world: int                   # data-parallel processes
    precision: str               # autocast precision: fp32, bf16, fp16
    threads: int                 # torch intra-op threads per process
    run_id: str
    parent: str = ""             # the model it was fine-tuned from (lineage.PARENT_TAG); '' = random weights
    parent_sha256: str = ""      # of the parent's checkpoint file
    frozen: tuple[str, ...] = () # blocks kept as the parent had them (--freeze)


@dataclass
class Example:
    """An utterance of a held-out split, for the card's commands."""
    file_id: str
    dataset: str                 # its split folder, as training was given it
    audio: str                   # its audio file


@dataclass
class ModelCard:
    """Everything the card says about one registered model version."""
    name: str                    # registered model name
    version: str
    parameters: int
    model: ModelConfig
    features: FeatureConfig
    vocabulary: int              # output classes, CTC blank included
    checkpoint: str              # the checkpoint file among the model's artifacts
    splits: list[SplitRow]
    training: TrainingFacts
    decoder: str                 # e.g. "beam+lm(order 3)" or "greedy"
    decode: DecodeConfig         # the decoder's settings
    lm_order: int | None         # the LM's order when it was built from the training transcripts, else None
    grid_points: int             # LM weight / word score pairs tuned over on dev (0: nothing tuned)
    dev: dict[str, float]        # wer, cer (the served decoder), wer_greedy, cer_greedy
    test: dict[str, float]       # the same on the test split; {} without one
    example: Example
    language: str = "en"         # of the transcripts (numbers spelled in it); the vocabulary is English a-z for "en"


def render(card: ModelCard) -> str:
    """The card as Markdown: a summary line, then Model, Features, Training data, Training, Accuracy, Decoder
    and Use it sections."""
    sections = [summary(card), model_section(card), features_section(card.features, card.model.streaming),
                data_section(card.splits),
                training_section(card.training), accuracy_section(card), decoder_section(card), usage_section(card)]
    return "\n\n".join(sections) + "\n"


def summary(card: ModelCard) -> str:
    held_out = card.test or card.dev
    where = "held-out test" if card.test else "dev (no test split)"
    return (f"**{card.name} version {card.version}**: a {millions(card.parameters)}-parameter DeepSpeech2-style CTC "
            f"model of {letters(card)}, served with {card.decoder} decoding: {where} WER {held_out['wer']:.4f}, "
            f"CER {held_out['cer']:.4f}.")


def english(card: ModelCard) -> bool:
    """Whether the card is of a model with the English default's vocabulary (29 classes, language en)."""
    return card.language == "en" and card.vocabulary == 29


def letters(card: ModelCard) -> str:
    """What the model writes, in a few words: "English letters", or the language and vocabulary size."""
    return "English letters" if english(card) else f"{card.language} text ({card.vocabulary} classes)"


def model_section(card: ModelCard) -> str:
    m = card.model
    return bullets("Model", [
        f"Parameters: {millions(card.parameters)} ({card.parameters:,})",
        f"Convolution: {counted(m.cnn_layers, 'residual CNN block')} of {m.cnn_channels} channels, time stride "
        f"{m.time_stride}",
        f"Recurrence: {m.rnn_layers} x {m.rnn_dim} GRU (layers x units per direction), "
        + (f"unidirectional (streaming model: look-ahead of {m.lookahead} frames, global feature statistics)"
           if m.streaming else "bidirectional"),
        f"Output: {card.vocabulary} classes per frame (letters, space{', apostrophe' * english(card)} and the CTC "
        f"blank)",
        f"Checkpoint: `{card.checkpoint}` among the version's artifacts"])


def features_section(f: FeatureConfig, streaming: bool = False) -> str:
    return bullets("Features", [
        f"{f.n_mfcc} MFCCs from {f.n_mels} mel bands of {f.sample_rate} Hz audio (any input rate is resampled)",
        f"Window {f.win_ms:g} ms, hop {f.hop_ms:g} ms",
        "Normalization: each coefficient with the training set's mean and variance, stored in the model (causal)"
        if streaming else
        "Normalization: per utterance, each coefficient to zero mean and unit variance over its frames"])


def data_section(splits: list[SplitRow]) -> str:
    rows = [[s.split, f"`{s.folder}`", str(s.utterances), audio_length(s.hours * 3600), str(s.speakers),
             f"`{s.digest}`"] for s in splits]
    return ("### Training data\n\n" + table(["split", "folder", "utterances", "audio", "speakers", "digest"], rows)
            + "\n\nDigests are of file ids and transcripts, as the run's Datasets list them: equal digests, "
              "the same utterances and references.")


def training_section(t: TrainingFacts) -> str:
    stop = "" if t.epochs >= t.max_epochs else ", early stop"
    return bullets("Training", [
        f"Epochs: {t.epochs} of {t.max_epochs} (best: epoch {t.best_epoch}{stop})",
        f"Wall time: {elapsed(t.seconds)} (set-up to registration; a resumed run's parts summed)",
        f"Hardware: {t.device} ({t.hardware}) x {t.world}, {t.precision}, {counted(t.threads, 'thread')}",
        f"Run: `{t.run_id}`",
        f"Lineage: {lineage(t)}"])


def lineage(t: TrainingFacts) -> str:
    """e.g. `fine-tuned from SpeechRecognitionModel/1 (checkpoint sha256 0123abcd4567), frozen blocks: cnn`."""
    if not t.parent:
        return "trained from random weights"
    digest = f" (checkpoint sha256 `{t.parent_sha256[:12]}`)" if t.parent_sha256 else ""
    frozen = f", frozen blocks: {', '.join(t.frozen)}" if t.frozen else ", every block trained"
    return f"fine-tuned from `{t.parent}`{digest}{frozen}"


def accuracy_section(card: ModelCard) -> str:
    splits = [("dev", card.dev)] + [("test", card.test)] * bool(card.test)
    header = ["decoder"] + [f"{split} {m}" for split, _ in splits for m in ("WER", "CER")]
    served = [f"{card.decoder} (served)"] + [f"{s[k]:.4f}" for _, s in splits for k in ("wer", "cer")]
    greedy = ["greedy"] + [f"{s[k]:.4f}" for _, s in splits for k in ("wer_greedy", "cer_greedy")]
    rows = [served] if card.decoder == "greedy" else [greedy, served]
    return "### Accuracy\n\n" + table(header, rows) + "\n\nCorpus-level WER and CER (0 = perfect)."


def decoder_section(card: ModelCard) -> str:
    d = card.decode
    if card.decoder == "greedy":
        return bullets("Decoder", ["Greedy (best path per frame), no LM: the model was trained with `--lm_order 0`"])
    lm = "none"
    if d.lm:
        origin = f"order {card.lm_order}, built from the training transcripts" if card.lm_order else "given"
        lm = f"`{Path(d.lm).name}` ({origin})"
    lexicon = f"`{Path(d.lexicon).name}`" if d.lexicon else "none (the LM's own words)"
    tuned = f" (tuned on dev over {counted(card.grid_points, 'grid point')})" if card.grid_points else ""
    return bullets("Decoder", [
        f"{card.decoder}: CTC beam search, beam size {d.beam_size}, beam threshold {d.beam_threshold:g}",
        f"LM: {lm}",
        f"Lexicon: {lexicon}",
        f"LM weight {d.lm_weight:g}, word score {d.word_score:g}{tuned}"])


def usage_section(card: ModelCard) -> str:
    """The three commands, with this version filled in (MLFLOW_TRACKING_URI set to the store it lives in)."""
    uri, e = f"models:/{card.name}/{card.version}", card.example
    audio = shlex.quote(e.audio)
    validate = (f"asr validate --registered_model {shlex.quote(card.name)} --model_version {card.version} "
                f"--file_id {e.file_id} --dataset {shlex.quote(e.dataset)}")
    transcribe = f"asr transcribe --model_uri {shlex.quote(uri)} {audio}"
    serve = (f"mlflow models serve -m {shlex.quote(uri)} --env-manager local --port {SERVE_PORT}\n"
             f"curl -s localhost:{SERVE_PORT}/invocations -H 'Content-Type: application/json' \\\n"
             f"  -d \"{{\\\"dataframe_records\\\": [{{\\\"audio\\\": \\\"$(base64 -w0 {audio})\\\"}}]}}\"")
    return ("### Use it\n\nWith `MLFLOW_TRACKING_URI` set to this registry's store. Transcribe one utterance by "
            f"file id and compare it with its transcript:\n\n{fenced(validate)}\n\nTranscribe audio files:\n\n"
            f"{fenced(transcribe)}\n\nServe it over HTTP and send it base64 audio:\n\n{fenced(serve)}")


# ---------------------------------------------------------------- Markdown and number formatting

def bullets(title: str, items: list[str]) -> str:
    return f"### {title}\n\n" + "\n".join(f"- {item}" for item in items)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join(f"| {' | '.join(cells)} |" for cells in lines)


def fenced(command: str) -> str:
    return f"```bash\n{command}\n```"


def millions(n: int) -> str:
    """3521437 -> `3.52 M`."""
    return f"{n / 1e6:.2f} M"


def elapsed(seconds: float) -> str:
    """`1 h 23 min`, `4 min 5 s`, `38 s`."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"
