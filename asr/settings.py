"""The settings of every command (train, validate, server, evaluate, lm tune/build, transcribe, serve-stream,
export, data synth/download, bench train/infer/stream), declared with asr.config's fields: `asr --help`, main.py,
the MLproject file (`python -m asr.settings > MLproject`), settings files and the MLflow params of each run come
from here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from asr import first_line
from asr.config import (
    DEFAULT_MODEL_URI,
    MODEL_BLOCKS,
    REGISTERED_MODEL,
    Checked,
    ConfigError,
    DecodeConfig,
    FeatureConfig,
    ModelConfig,
    RecognizerConfig,
    cli_value,
    fields,
    opt,
    section,
)

# ---------------------------------------------------------------- names the tracking store and registry refuse
# MLflow's own validators, run when the settings are built: a name the registry refuses would otherwise be found
# only when it is used, after the training or evaluation it was meant to record.


def _mlflow_refuses(validate: Callable[..., Any], *args: Any) -> str | None:
    """MLflow's reason for refusing the value (the first line of its error), or None."""
    from mlflow.exceptions import MlflowException

    try:
        validate(*args)
    except MlflowException as e:
        return f"MLflow refuses it: {first_line(e)}"
    return None


def registered_model_problem(name: str) -> str | None:
    """What the Model Registry would say when registering or loading a model of this name."""
    from mlflow.utils.validation import _validate_model_name

    return _mlflow_refuses(_validate_model_name, name)


def experiment_problem(name: str) -> str | None:
    from mlflow.utils.validation import _validate_experiment_name

    return _mlflow_refuses(_validate_experiment_name, name)


def alias_problem(alias: str) -> str | None:
    """'' = no alias; else the rules MLflow applies to alias names (letters, digits, _ and -; not v1, latest)."""
    from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

    return alias and (_mlflow_refuses(_validate_model_alias_name, alias)
                      or _mlflow_refuses(_validate_model_alias_name_reserved, alias))


def stage_problem(stage: str) -> str | None:
    from mlflow.entities.model_registry.model_version_stages import get_canonical_stage

    return _mlflow_refuses(get_canonical_stage, stage)


# LibriSpeech utterance ids, SPEAKER-CHAPTER-UTTERANCE: digits only, so an id can never reach outside a dataset
FILE_ID = re.compile(r"^\d+-\d+-\d+$")


def file_id_problem(file_id: str) -> str | None:
    """Why `file_id` is not an utterance id (checked before a command loads a model or touches a store)."""
    if FILE_ID.fullmatch(file_id or ""):
        return None
    return "invalid file id: expected SPEAKER-CHAPTER-UTTERANCE digits, e.g. 1089-134686-0000"


def version_problem(version: str) -> str | None:
    return None if not version or version.isdigit() else "a model version is a number (1, 2, ...)"


def model_uri_problem(uri: str) -> str | None:
    """A models:/ URI that MLflow could never resolve: malformed, or naming a model, stage or alias the registry
    refuses. Other forms (runs:/, checkpoints, folders) are checked when they are loaded."""
    if not uri.startswith("models:/"):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import _parse_model_uri

    try:
        parsed = _parse_model_uri(uri)
    except MlflowException as e:
        return f"MLflow refuses it: {first_line(e)}"
    if parsed.model_id is not None:  # models:/m-<id>, a logged model by its id
        return None
    return (registered_model_problem(parsed.name) or (parsed.stage and stage_problem(parsed.stage))
            or (parsed.alias and alias_problem(parsed.alias)) or None)


def parse_part(text: str) -> tuple[int, int]:
    """(i, n) from 'i/n' (--shard). Raises ValueError with a one-line reason: not two whole numbers, n < 1, i >= n."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError("expected PART/PARTS as two whole numbers, e.g. 0/2 (parts numbered from 0)") from None
    if n < 1:
        raise ValueError("PARTS must be at least 1")
    if not 0 <= i < n:
        raise ValueError(f"part {i} of {n}: parts are numbered 0 to {n - 1}")
    return i, n


def part_problem(text: str) -> str | None:
    try:
        parse_part(text)
    except ValueError as e:
        return str(e)
    return None


FEATURE_CACHE_HELP = ("feature store root: each split's features are computed once into shards of numpy arrays "
                      "under it, keyed by the feature settings and the audio files, and read lazily ('' = "
                      "$XDG_CACHE_HOME/asr/features, else ~/.cache/asr/features; 'memory' = no store: every "
                      "process computes every feature into RAM)")


@dataclass
class DataConfig(Checked):
    train_data: tuple[str, ...] = opt(("data/demo/train",), "LibriSpeech-layout split folder(s) to train on, "
                                      "comma-separated", exists="dir")
    dev_data: tuple[str, ...] = opt(("data/demo/dev",), "split folder(s) scored every epoch (val_loss, wer, cer)",
                                    exists="dir")
    test_data: tuple[str, ...] = opt(("data/demo/test",), "held-out split folder(s) scored once after training "
                                     "('' to skip)", exists="dir")
    max_utterances: int = opt(0, "use at most this many training utterances (0 = all)", min=0)
    max_seconds: float = opt(30.0, "skip (and count) training utterances longer than this many seconds", min=0.1)
    feature_cache: str = opt("", FEATURE_CACHE_HELP)
    workers: int = opt(1, "single-threaded processes computing augmented features during training (up-front "
                       "featurization uses one per core); 0 = everything in the main process", min=0)


def language_problem(language: str) -> str | None:
    """A language num2words cannot spell numbers in (it names those it can)."""
    from asr.text import language_problem as problem

    return problem(language)


@dataclass
class TextConfig(Checked):
    """How transcripts become labels: the vocabulary and the per-language normalization a model carries."""
    vocab: str = opt("", "characters the model emits: english (blank, space, apostrophe, a-z), auto (learned "
                     "from the training transcripts after normalization: letters, marks and the apostrophe seen at "
                     "least --vocab_min_count times), or a FILE: one character per line, or JSON (a list, or a "
                     "run's vocab.json); '' = english for --language en, auto for any other language")
    language: str = opt("en", "language of the transcripts (num2words' code: en, es, de, fr, ...): numbers written "
                        "with digits are spelled out in it", check=language_problem)
    lowercase: bool = opt(True, "lower-case transcripts before they become labels (false keeps capitals: needs "
                          "--vocab auto or a FILE)")
    vocab_min_count: int = opt(5, "--vocab auto learns a character only when the training transcripts hold it this "
                               "many times; rarer ones are reported and dropped", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.vocab:
            # English keeps the vocabulary every English model has; another language's letters are learned
            self.vocab = "english" if self.language == "en" else "auto"
        if self.vocab == "english" and not self.lowercase:
            raise ConfigError("--lowercase false keeps capitals, which the english vocabulary has none of: give "
                              "--vocab auto or a vocabulary FILE with them")


@dataclass
class AugmentConfig(Checked):
    """Training-only augmentation; every strength 0 = off."""
    freq_mask: int = opt(2, "SpecAugment: widest frequency mask in MFCC bins", min=0)
    time_mask: int = opt(10, "SpecAugment: widest of the two time masks, in frames", min=0)
    gain_db: float = opt(0.0, "waveform gain drawn from [-gain_db, +gain_db] dB", min=0)
    noise_snr_db: float = opt(0.0, "white noise at an SNR drawn from [noise_snr_db, noise_snr_db + 20] dB", min=0)
    shift_ms: float = opt(0.0, "random time shift of up to this many milliseconds either way", min=0)
    speed_perturb: float = opt(0.0, "speed factor drawn from [1 - speed_perturb, 1 + speed_perturb] (Kaldi-style)",
                               min=0, below=1)


@dataclass
class OptimConfig(Checked):
    epoch: int = opt(12, "passes over the training data", min=1)
    batch: int = opt(16, "most utterances per batch", min=1)
    max_batch_seconds: float = opt(0.0, "most padded audio seconds per batch, from length-sorted buckets (0 = batch "
                                   "by utterance count alone)", min=0)
    accumulate: int = opt(1, "batches whose gradients are summed before each optimizer step", min=1)
    learning_rate: float = opt(3e-3, "peak learning rate of the one-cycle schedule (AdamW)", min=1e-12)
    weight_decay: float = opt(0.01, "AdamW weight decay", min=0)
    grad_clip: float = opt(1.0, "clip the gradient norm to this value", min=1e-12)
    patience: int = opt(0, "stop after this many epochs without a better dev WER/CER (0 = run every epoch)", min=0)
    precision: str = opt("auto", "autocast precision (weights and loss stay fp32); auto = bf16 on a GPU that has "
                         "it, on a CPU only if a probe of this model's step (cached) measures it 5% faster, else "
                         "fp32; fp16 is for GPUs", ("auto", "fp32", "bf16", "fp16"))
    threads: int = opt(0, "torch intra-op threads (0 = torch's default, one per physical core, less one per busy "
                       "loader worker, at least 1)", min=0)
    seed: int = opt(0, "seed for weights, shuffling and augmentation", min=0)


@dataclass
class TrackingConfig(Checked):
    experiment: str = opt("SpeechRecognition", "MLflow experiment name", check=experiment_problem)
    run_name: str = opt("", "MLflow run name ('' = MLflow picks one)")
    registered_model: str = opt(REGISTERED_MODEL, "Model Registry name every trained model is registered under",
                                check=registered_model_problem)
    promote: str = opt("if-better", "promote the new version to Production: always, never, or only if its dev WER "
                       "beats the current Production version's (if-better compares only versions scored on the "
                       "same dev set, their dev_digest tag; otherwise it does not promote, and says so)",
                       ("if-better", "always", "never"))
    offline_ok: bool = opt(False, "when the tracking server is unreachable, train and log to the local store "
                           "sqlite:///mlflow.db instead, saying so (default: fail at once)")
    system_metrics: bool = opt(True, "log CPU, memory, disk, network and GPU use during training as the run's "
                               "system/... metrics (MLflow's monitor, every 10 s or "
                               "$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL)")


@dataclass
class CheckpointConfig(Checked):
    output_dir: str = opt("outputs", "checkpoints go to OUTPUT_DIR/RUN_ID (last.pt to resume from, best.pt)")
    checkpoint_every: int = opt(200, "also checkpoint every this many optimizer steps (0 = at epoch ends only)",
                                min=0)
    resume: str = opt("", "continue an interrupted run: OUTPUT_DIR/RUN_ID, its last.pt, or 'latest' (the run's "
                      "saved settings are used)")


@dataclass
class FineTuneConfig(Checked):
    """Starting from a trained model's weights instead of random ones (a new run: fresh optimizer and schedule)."""
    init_from: str = opt("", "start from this model's weights: models:/NAME/VERSION, models:/NAME/STAGE, "
                         "models:/NAME@ALIAS, runs:/RUN_ID/model, a run id, or a checkpoint (.pt) or its "
                         "OUTPUT_DIR/RUN_ID folder; its feature and model shape settings are taken (giving another "
                         "value is refused; --dropout may change), and its output layer is re-initialized when its "
                         "classes differ from this run's ('' = random weights)", check=model_uri_problem)
    freeze: tuple[str, ...] = opt((), "blocks whose --init_from weights stay fixed, comma-separated: stem (first "
                                  "convolution), cnn (residual CNN blocks), proj, rnns (GRU layers), lookahead (a "
                                  "streaming model's look-ahead layer), classifier",
                                  MODEL_BLOCKS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.freeze and not self.init_from:
            raise ConfigError(f"--freeze {','.join(self.freeze)} needs --init_from: frozen random weights would "
                              "never learn")
        if set(self.freeze) == set(MODEL_BLOCKS):
            raise ConfigError(f"--freeze {','.join(self.freeze)} names every block: nothing would train")


# The grid `asr lm tune` searches and training tunes the attached LM's decoder on.
LM_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
WORD_SCORES = (-2.0, -1.0, 0.0, 1.0, 2.0)
LM_WEIGHTS_HELP = "LM weights to try, comma-separated"
WORD_SCORES_HELP = "word scores (insertion bonuses) to try, comma-separated"


def check_grid(cfg: Any) -> None:
    """A grid with no value on an axis has no point to score."""
    for name in ("lm_weights", "word_scores"):
        if not getattr(cfg, name):
            raise ConfigError(f"--{name} is empty: give at least one value")


@dataclass
class DecoderSection(Checked):
    """The decoder a trained model carries and decodes with by default (beam search + word LM, tuned on dev)."""
    lm: str = opt("", "word LM to attach to the model (ARPA or KenLM binary; '' = build one of --lm_order from the "
                  "training transcripts)", exists="file")
    lm_order: int = opt(3, "order of the LM built from the training transcripts when no --lm is given (2 or more; "
                        "0 = attach no LM: the model decodes greedily)", min=0, below=10)
    lexicon: str = opt("", "lexicon to attach with the LM (word, then its letters and |); '' = the LM's own words",
                       exists="file")
    beam_size: int = opt(DecodeConfig.beam_size, "beam search of the attached decoder: hypotheses kept after each "
                         "frame", min=1)
    beam_threshold: float = opt(DecodeConfig.beam_threshold, "beam search of the attached decoder: drop hypotheses "
                                "scoring this much below the best", min=0)
    lm_weights: tuple[float, ...] = opt(LM_WEIGHTS, f"{LM_WEIGHTS_HELP}: the LM weight is tuned on the dev split "
                                        "after training")
    word_scores: tuple[float, ...] = opt(WORD_SCORES, f"{WORD_SCORES_HELP}: tuned with the LM weight")

    def __post_init__(self) -> None:
        if self.lm_order == 1:
            raise ConfigError("--lm_order 1: the beam search decoder's KenLM cannot load a unigram LM (it assumes at "
                              "least a bigram model); use --lm_order 2 or more, or 0 for no LM")
        super().__post_init__()
        check_grid(self)
        if self.lm_order == 0 and self.lm:
            raise ConfigError(f"--lm {self.lm} attaches that LM, --lm_order 0 attaches none: give one or the other")
        if self.lm_order == 0 and self.lexicon:
            raise ConfigError(f"--lexicon {self.lexicon} needs an LM to go with it: leave out --lm_order 0 (an LM "
                              "is built from the training transcripts) or give --lm FILE")

    @property
    def attached(self) -> bool:
        """Whether the model is to carry a beam search decoder with an LM (else it decodes greedily)."""
        return bool(self.lm) or self.lm_order >= 2


@dataclass
class TrainConfig:
    """Everything `asr train` takes, by section."""
    data: DataConfig = section(DataConfig)
    text: TextConfig = section(TextConfig)
    features: FeatureConfig = section(FeatureConfig)
    model: ModelConfig = section(ModelConfig)
    augment: AugmentConfig = section(AugmentConfig)
    optim: OptimConfig = section(OptimConfig)
    tracking: TrackingConfig = section(TrackingConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)
    finetune: FineTuneConfig = section(FineTuneConfig)
    decoder: DecoderSection = section(DecoderSection)

    def recognizer(self) -> RecognizerConfig:
        """The settings a model checkpoint carries: features and model shape."""
        return RecognizerConfig(self.features, self.model)


@dataclass
class ValidateConfig(Checked):
    registered_model: str = opt(REGISTERED_MODEL, "registered model to load", check=registered_model_problem)
    model_stage: str = opt("Production", "stage to load (ignored when model_version or model_alias is set)",
                           check=stage_problem)
    model_alias: str = opt("", "alias to load, e.g. production ('' = use the stage)", check=alias_problem)
    model_version: str = opt("", "version number to load ('' = use the alias or stage)", check=version_problem)
    file_id: str = opt("1089-134686-0000", "LibriSpeech-style utterance id: SPEAKER-CHAPTER-UTTERANCE",
                       check=file_id_problem)
    dataset: str = opt("", "split folder (or a folder of splits) holding the file id; '' = search data/demo "
                       "and data/LibriSpeech")
    experiment: str = opt("SpeechRecognition", "MLflow experiment the validation run is logged to",
                          check=experiment_problem)


@dataclass
class PromoteConfig(Checked):
    registered_model: str = opt(REGISTERED_MODEL, "registered model whose version to promote",
                                check=registered_model_problem)
    model_version: str = opt("", "version to promote to Production", check=version_problem, required=True)


@dataclass
class ServerConfig(Checked):
    backend_store_uri: str = opt("sqlite:///mlflow.db", "where runs and registered models are stored: a SQLite "
                                 "file, or postgresql://USER:PASSWORD@HOST:PORT/DB for a team")
    artifacts_destination: str = opt("./mlruns", "where the server stores the artifacts clients upload through it "
                                     "(a folder, s3://..., gs://...); clients need no storage credentials")
    host: str = opt("127.0.0.1", "interface to bind (0.0.0.0 exposes it to the network)")
    port: int = opt(5000, "port to listen on", min=1, below=65536)
    workers: int = opt(4, "server processes answering requests (more for a busy team, 1 on a small machine)",
                       min=1)
    allowed_hosts: str = opt("", "Host headers the server answers, comma-separated (e.g. mlflow.example.com,"
                             "10.0.0.5:5000); '' = MLflow's default: localhost and private IPs")
    cors_allowed_origins: str = opt("", "web origins allowed to change things through the API, comma-separated; the "
                                    "UI's own (e.g. http://mlflow.example.com:5000) for it to work from other "
                                    "machines; '' = MLflow's default: localhost pages only")


@dataclass
class EvaluateConfig(DecodeConfig):
    model_uri: str = opt(DEFAULT_MODEL_URI, "model: models:/NAME@ALIAS or /VERSION, "
                         "runs:/RUN_ID/model, a run id, a checkpoint (.pt) or its OUTPUT_DIR/RUN_ID folder",
                         check=model_uri_problem)
    dataset: tuple[str, ...] = opt(("data/demo/test",), "split folder(s) to score, comma-separated (LibriSpeech "
                                   "layout)", exists="dir")
    max_utterances: int = opt(0, "score at most this many utterances (0 = all)", min=0)
    batch_seconds: float = opt(200.0, "most padded audio seconds per model batch (bounds memory)", min=1.0)
    worst: int = opt(20, "utterances with the most errors kept in the logged table", min=0)
    experiment: str = opt("SpeechRecognition", "MLflow experiment the evaluation run is logged to",
                          check=experiment_problem)


@dataclass
class TuneConfig(EvaluateConfig):
    """`asr lm tune`: scores a grid of (lm_weight, word_score) on a dev split; what it does not use of evaluate's
    settings (the single LM weight and word score the grid replaces, the worst-errors table) it does not offer."""
    unused: ClassVar[tuple[str, ...]] = ("lm_weight", "word_score", "worst")
    dataset: tuple[str, ...] = opt(("data/demo/dev",), "split folder(s) the grid is scored on (a dev split, not "
                                   "the test split)", exists="dir")
    lm_weights: tuple[float, ...] = opt(LM_WEIGHTS, LM_WEIGHTS_HELP)
    word_scores: tuple[float, ...] = opt(WORD_SCORES, WORD_SCORES_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_grid(self)


# The shortest pause that can end a streamed segment (--endpoint_ms of transcribe --stream, serve-stream, bench
# stream): one feature hop at the default 10 ms; output frames, where quiet is seen, are coarser still (30 ms).
ENDPOINT_MIN_MS = 10.0
RAW_FORMATS = ("s16le", "s32le", "f32le")  # raw PCM on stdin that `asr transcribe --stream -` decodes (asr.live)
MODEL_URI_HELP = ("models:/NAME@ALIAS or /VERSION, runs:/RUN_ID/model, a run id, a checkpoint (.pt) or its "
                  "OUTPUT_DIR/RUN_ID folder")


@dataclass
class TranscribeConfig(DecodeConfig):
    model_uri: str = opt(DEFAULT_MODEL_URI, f"model: {MODEL_URI_HELP}", check=model_uri_problem)
    json: bool = opt(False, "print JSON lines: file, text, seconds (with --stream: start, end, text of each segment)",
                     flag=True)
    stream: bool = opt(False, "transcribe one input as it arrives: a file, or - for stdin (raw PCM as --raw_format "
                       "and --raw_rate say, or a WAV, FLAC, Ogg... file); each segment prints once it ends (after "
                       "a pause), as `[  START -     END] text` (seconds from the start); on a terminal the open "
                       "segment's text so far refreshes one line", flag=True)
    mic: bool = opt(False, "stream from the default microphone (needs sounddevice: pip install sounddevice); Ctrl-C "
                    "stops, printing the open segment", flag=True)
    realtime: bool = opt(False, "--stream of a file: deliver its audio at real time, as a live source would "
                         "(default: as fast as it is read)", flag=True)
    chunk_ms: float = opt(100.0, "--stream: milliseconds of audio fed to the recognizer at a time", min=1.0)
    endpoint_ms: float = opt(800.0, "--stream: a segment ends after this many milliseconds of quiet following "
                             "speech", min=ENDPOINT_MIN_MS)
    raw_format: str = opt("s16le", "--stream -: sample format of raw PCM on stdin (mono, little-endian; s16le is "
                          "what `ffmpeg -f s16le` and `arecord -f S16_LE` write)", RAW_FORMATS)
    raw_rate: int = opt(16000, "--stream -: sample rate of raw PCM on stdin (Hz; resampled to the model's)",
                        min=1000)
    partials: bool = opt(False, "--stream --json: also print {\"partial\": TEXT} lines whenever the open segment's "
                         "text changes", flag=True)


@dataclass
class StreamServerConfig(DecodeConfig):
    """`asr serve-stream`: live transcription over WebSocket (asr.stream_server describes the protocol). Only what a
    stream uses: no --chunk_seconds (whole files are cut into pieces, a stream comes in the client's messages)."""
    unused: ClassVar[tuple[str, ...]] = ("chunk_seconds",)
    model_uri: str = opt(DEFAULT_MODEL_URI, f"model: {MODEL_URI_HELP}", check=model_uri_problem)
    host: str = opt("127.0.0.1", "interface to bind (0.0.0.0 exposes it to the network)")
    port: int = opt(8765, "port to listen on (0 = any free port, printed when it listens)", min=0, below=65536)
    max_message_bytes: int = opt(1 << 20, "largest message a client may send, bytes (1 s of 16 kHz s16le audio is "
                                 "32000); a larger one is refused and the connection closed", min=64)
    max_connections: int = opt(16, "connections served at once; more are refused (close code 1013)", min=1)
    max_session_seconds: float = opt(3600.0, "audio one connection may stream, seconds; the stream is then ended",
                                     min=1.0)
    endpoint_ms: float = opt(800.0, "a pause this long (milliseconds) ends a segment: its final text is sent",
                             min=ENDPOINT_MIN_MS)
    max_segment_s: float = opt(30.0, "a segment is ended at this length (seconds) whatever the pauses", min=1.0)
    threads: int = opt(0, "threads the model runs in for all connections (0 = one per core, up to 4)", min=0)


@dataclass
class LMBuildConfig(Checked):
    text: str = opt("", "text file, one sentence per line", exists="file")
    from_dataset: tuple[str, ...] = opt((), "split folder(s) whose transcripts are the text, comma-separated "
                                        "(LibriSpeech layout)")
    order: int = opt(3, "n-gram order (2 or more: the decoder's KenLM cannot load a unigram LM)", min=2, below=10)
    out: str = opt("lm.arpa", "ARPA file to write")
    lexicon: str = opt("", "also write a lexicon of the LM's words here")
    model_uri: str = opt("", f"the model the LM is for: its vocabulary and language normalize the text and spell the "
                         f"lexicon ({MODEL_URI_HELP}; '' = the English default)", check=model_uri_problem)

    def __post_init__(self) -> None:
        if self.order == 1:
            raise ConfigError("--order 1: the beam search decoder's KenLM cannot load a unigram LM (it assumes at "
                              "least a bigram model); use --order 2 or more")
        super().__post_init__()
        if bool(self.text) == bool(self.from_dataset):
            raise ConfigError("give exactly one of --text FILE or --from-dataset DIR")


@dataclass
class ExportConfig(Checked):
    model_uri: str = opt(DEFAULT_MODEL_URI, "model to export (same forms as `asr transcribe --model-uri`)",
                         check=model_uri_problem)
    format: str = opt("torchscript", "what to write; not given: what --out's extension says (.onnx: onnx; .pt, "
                      ".ts: torchscript)", ("torchscript", "onnx"))
    out: str = opt("", "file (.pt or .onnx) or folder to write to", required=True)
    quantize: bool = opt(False, "dynamic int8 quantization of the GRU and linear layers (CPU)", flag=True)


SYNTH_LANGUAGES = ("en", "es", "de", "fr")  # asr.data.synth.languages describes each


@dataclass
class SynthConfig(Checked):
    root: str = opt("", "folder the corpus is written to (splits train, dev, test); '' = data/demo for English, "
                    "data/demo-LANGUAGE (e.g. data/demo-es) for the others")
    seed: int = opt(0, "same seed, same corpus: byte-identical transcripts and audio", min=0)
    train_minutes: float = opt(150.0, "minutes of training audio", min=0.05)
    dev_minutes: float = opt(4.0, "minutes of dev audio", min=0.05)
    test_minutes: float = opt(4.0, "minutes of test audio", min=0.05)
    workers: int = opt(2, "synthesis processes", min=1)
    language: str = opt("en", "language spoken and written: eSpeak NG voices of that language and its wordfreq "
                        "words; transcripts keep its letters (lower case, NFC; English stays upper case)",
                        SYNTH_LANGUAGES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.root):
            self.root = "data/demo" if self.language == "en" else f"data/demo-{self.language}"


@dataclass
class FeaturesConfig(Checked):
    """`asr data features`: the stores `asr train` with the same data and feature options reads."""
    train_data: tuple[str, ...] = opt(("data/demo/train",), "training split folder(s), comma-separated, as "
                                      "`asr train` takes them ('' = none)", exists="dir")
    dev_data: tuple[str, ...] = opt(("data/demo/dev",), "dev split folder(s) ('' = none)", exists="dir")
    test_data: tuple[str, ...] = opt(("data/demo/test",), "test split folder(s) ('' = none)", exists="dir")
    max_utterances: int = opt(0, "the training sample `asr train --max_utterances` takes (0 = all)", min=0)
    seed: int = opt(0, "the seed of that sample (`asr train --seed`)", min=0)
    feature_cache: str = opt("", FEATURE_CACHE_HELP, check=lambda v: "there is nothing to write: give the store's "
                             "root folder" if v == "memory" else None)
    shard: str = opt("0/1", "compute only part i of n (i/n, numbered from 0: the shards k with k % n == i), e.g. one "
                     "part per machine sharing the store's folder", check=part_problem)
    workers: int = opt(0, "featurization processes (0 = one per core, up to 8)", min=0)
    streaming: bool = opt(False, "the features of a streaming model (`asr train --streaming`): causal and "
                          "un-normalized, stored under their own key")
    features: FeatureConfig = section(FeatureConfig)


@dataclass
class DownloadConfig:
    split: str = opt("", "LibriSpeech split, e.g. test-clean or train-clean-100", required=True)
    root: str = opt("data", "the split lands in ROOT/LibriSpeech/SPLIT")
    mirror: str = opt("", "base URL of another mirror of openslr resource 12 ('' = openslr.org)")


@dataclass
class BenchTrainConfig(Checked):
    data: str = opt("data/demo/train", "split whose utterances are trained on")
    utterances: int = opt(200, "how many of them (a fixed sample)", min=1)
    seconds: float = opt(60.0, "timed training per measurement", min=0.1)
    config: tuple[str, ...] = opt(("default", "classic"), "model configs to measure, comma-separated",
                                  ("default", "classic"))
    out: str = opt("BENCHMARKS.md", "Markdown file whose `train` section is replaced")


@dataclass
class BenchInferConfig(Checked):
    model_uri: str = opt(DEFAULT_MODEL_URI, "model to measure (same forms as `asr transcribe --model-uri`)",
                         check=model_uri_problem)
    data: str = opt("data/demo/test", "split to transcribe")
    lm: str = opt("", "ARPA/KenLM LM for the beam+LM rows ('' = skip them)")
    beam_size: int = opt(50, "beam search: hypotheses kept after each frame", min=1)
    repeats: int = opt(10, "timed runs of the 10-second clip", min=1)
    out: str = opt("BENCHMARKS.md", "Markdown file whose section is replaced")
    section: str = opt("infer", "name of the block of --out this run replaces")


@dataclass
class BenchLMConfig(Checked):
    size_mb: float = opt(800.0, "size of the synthetic word 4-gram ARPA LM, MB", min=0.1)
    seed: int = opt(0, "seed of the synthetic LM and utterance (same seed and size, same file)")
    work_dir: str = opt("", "folder the synthetic LM is written to and reused from ('' = asr-bench-lm in the "
                        "system's temporary folder)")
    beam_size: int = opt(50, "beam search: hypotheses kept after each frame", min=1)
    out: str = opt("BENCHMARKS.md", "Markdown file whose `lm` section is replaced")


@dataclass
class BenchDataConfig(Checked):
    hours: tuple[float, ...] = opt((10.0, 30.0, 100.0), "corpus sizes in hours of training audio, comma-separated: "
                                   "one corpus of the largest is generated, the others are its prefixes")
    work_dir: str = opt("", "folder the corpus, its prefixes and the feature stores are written to and reused from "
                        "('' = asr-bench-data in the system's temporary folder)")
    seconds: float = opt(30.0, "timed training per throughput measurement", min=0.1)
    seed: int = opt(0, "seed of the synthetic corpus (same seed and largest size, same corpus)", min=0)
    out: str = opt("BENCHMARKS.md", "Markdown file whose `data` section is replaced")


@dataclass
class BenchStreamConfig(Checked):
    model_uri: str = opt("", f"model to measure ({MODEL_URI_HELP})", check=model_uri_problem, required=True)
    dataset: str = opt("data/LibriSpeech/test-clean", "split whose utterances are streamed (LibriSpeech layout)",
                       exists="dir")
    utterances: int = opt(4, "how many of them (the first, by file id)", min=1)
    chunk_ms: tuple[float, ...] = opt((20.0, 100.0, 500.0), "chunk sizes to stream in, milliseconds, comma-separated")
    streams: int = opt(4, "recognizers run round-robin in one thread for the CPU time per concurrent stream", min=1)
    endpoint_ms: float = opt(800.0, "a pause this long (milliseconds) ends a segment", min=ENDPOINT_MIN_MS)
    out: str = opt("BENCHMARKS.md", "Markdown file whose `stream` section is replaced")
    json_out: str = opt("", "JSON file the numbers are written to ('' = --out's name with .stream.json)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.chunk_ms or min(self.chunk_ms) <= 0:
            raise ConfigError(f"--chunk_ms {','.join(f'{c:g}' for c in self.chunk_ms)}: give positive sizes, "
                              "e.g. 20,100,500")


# MLproject parameter types, by dataclass field type
_MLPROJECT_TYPES = {"int": "float", "float": "float", "str": "string", "bool": "string", "tuple[str, ...]": "string",
                    "tuple[float, ...]": "string"}


def mlproject_fields(cls: type) -> list:
    """The settings of `cls` an MLproject entry point declares: all but those that `need` another setting on (see
    asr.config.opt). `mlflow run` logs every declared parameter, at its default too, which would give every
    bidirectional run a meaningless lookahead param; an undeclared one given with -P (-P lookahead=3) is still
    appended to the command (--lookahead 3) and logged."""
    return [f for f in fields(cls) if not f.metadata.get("needs")]


def render_mlproject() -> str:
    """The MLproject file, generated from the configs so its parameters can never drift from the code."""
    def params(cls: type, indent: str) -> list[str]:
        out = []
        for f in mlproject_fields(cls):
            default = json.dumps(cli_value(f.default))
            out.append(f"{indent}{f.name}: {{type: {_MLPROJECT_TYPES[f.type]}, default: {default}}}")
        return out

    def flags(cls: type) -> str:
        return " ".join(f"--{f.name} {{{f.name}}}" for f in mlproject_fields(cls))

    conditional = [f"{f.name} ({f.metadata['needs']})" for f in fields(TrainConfig) if f.metadata.get("needs")]
    lines = [
        "# Generated from asr/settings.py by `python -m asr.settings > MLproject`; edit the dataclasses, not this.",
        "# Not declared, since `mlflow run` logs every declared parameter and these mean nothing without the setting",
        f"# named: {', '.join(conditional)}. Give them with -P NAME=VALUE all the same: MLflow appends them to the",
        "# command as --NAME VALUE.",
        "name: speech-recognition",
        "",
        "conda_env: conda.yaml",
        "",
        "entry_points:",
        "  server:",
        "    parameters:",
        *params(ServerConfig, "      "),
        f"    command: \"python -m asr server {flags(ServerConfig)}\"",
        "",
        "  train:",
        "    parameters:",
        *params(TrainConfig, "      "),
        f"    command: \"python main.py --train True {flags(TrainConfig)}\"",
        "",
        "  validate:",
        "    parameters:",
        *params(ValidateConfig, "      "),
        f"    command: \"python main.py --train False {flags(ValidateConfig)}\"",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_mlproject(), end="")
