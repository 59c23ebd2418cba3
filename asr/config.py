"""Typed configs: the one source of truth for every hyperparameter and command parameter.

The CLI options, `main.py`, the MLproject parameters and the params logged to MLflow are all
derived from these dataclasses, so a new field shows up everywhere at once. Training settings are
nested in sections (each consumer takes its own: the feature extractor `features`, the model `model`,
...), but every setting keeps one flat name, unique across sections, that the CLI (--hop_ms),
MLproject (-P hop_ms=...), settings files, config.json and MLflow params use.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr import UserError

REGISTERED_MODEL = "SpeechRecognitionModel"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@production"  # the Production model, by its alias


class ConfigError(UserError):
    """A setting that cannot work, refused before any data is read or compute is spent."""


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, *, min: float | None = None,
        below: float | None = None) -> Any:
    """A dataclass field that carries its own --help text, allowed values and range (min <= value < below)."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "below": below})


def section(cls: type) -> Any:
    """A nested section of a config (its fields keep their flat names)."""
    return field(default_factory=cls, metadata={"section": True})


def check_ranges(cfg: Any) -> None:
    """Raises ConfigError naming the option when a field is outside its declared range."""
    for f in dataclasses.fields(cfg):
        value, low, high = getattr(cfg, f.name), f.metadata.get("min"), f.metadata.get("below")
        if low is not None and value < low:
            raise ConfigError(f"--{f.name} must be at least {low:g}, got {value:g}")
        if high is not None and value >= high:
            raise ConfigError(f"--{f.name} must be below {high:g}, got {value:g}")


class Checked:
    """Mixin: ranges are checked whenever a config is built."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class DataConfig(Checked):
    train_data: str = opt("data/demo/train", "LibriSpeech-layout split folder(s) to train on, comma-separated")
    dev_data: str = opt("data/demo/dev", "split folder scored every epoch (val_loss, wer, cer)")
    test_data: str = opt("data/demo/test", "held-out split scored once after training ('' to skip)")
    max_utterances: int = opt(0, "use at most this many training utterances (0 = all)", min=0)
    max_seconds: float = opt(30.0, "skip (and count) training utterances longer than this many seconds", min=0.1)
    feature_cache: str = opt("", "folder for an on-disk feature cache keyed by the feature settings ('' = off)")
    workers: int = opt(1, "single-threaded processes computing augmented features during training (up-front "
                       "featurization uses one per core); 0 = everything in the main process", min=0)


@dataclass
class FeatureConfig(Checked):
    """MFCC features: what the model hears (a checkpoint carries them)."""
    sample_rate: int = opt(16000, "audio is resampled to this rate (Hz) before feature extraction", min=1000)
    n_mfcc: int = opt(13, "MFCC coefficients per frame (the model's input channels); few keep the spectral envelope, "
                       "not the pitch harmonics that differ between voices", min=1)
    n_mels: int = opt(80, "mel filterbank size the MFCCs are computed from", min=1)
    win_ms: float = opt(25.0, "analysis window length in milliseconds", min=1.0)
    hop_ms: float = opt(10.0, "hop between frames in milliseconds", min=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_mfcc > self.n_mels:
            raise ConfigError(f"--n_mfcc ({self.n_mfcc}) cannot exceed --n_mels ({self.n_mels}): MFCCs are a "
                              "transform of the mel bands")


@dataclass
class ModelConfig(Checked):
    """The acoustic model's shape (a checkpoint carries it)."""
    time_stride: int = opt(3, "time stride of the first convolution; the GRUs see 1000/hop_ms/time_stride frames/s",
                           min=1)
    cnn_layers: int = opt(1, "residual CNN blocks", min=0)
    cnn_channels: int = opt(16, "channels of every CNN layer", min=1)
    rnn_layers: int = opt(2, "bidirectional GRU layers", min=1)
    rnn_dim: int = opt(192, "hidden size of each GRU direction", min=1)
    dropout: float = opt(0.05, "dropout probability in CNN, GRU and classifier layers", min=0, below=1)


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
    precision: str = opt("auto", "autocast precision (weights and loss stay fp32); auto = bf16 where the CPU/GPU "
                         "has it, else fp32; fp16 is for GPUs", ("auto", "fp32", "bf16", "fp16"))
    threads: int = opt(0, "torch intra-op threads (0 = one per physical core)", min=0)
    seed: int = opt(0, "seed for weights, shuffling and augmentation", min=0)


@dataclass
class TrackingConfig:
    experiment: str = opt("SpeechRecognition", "MLflow experiment name")
    run_name: str = opt("", "MLflow run name ('' = MLflow picks one)")
    registered_model: str = opt(REGISTERED_MODEL, "Model Registry name every trained model is registered under")
    promote: str = opt("if-better", "promote the new version to Production: always, never, or only if its dev WER "
                       "beats the current Production version's", ("if-better", "always", "never"))
    offline_ok: bool = opt(False, "when the tracking server is unreachable, train and log to the local store "
                           "sqlite:///mlflow.db instead, saying so (default: fail at once)")


@dataclass
class CheckpointConfig(Checked):
    output_dir: str = opt("outputs", "checkpoints go to OUTPUT_DIR/RUN_ID (last.pt to resume from, best.pt)")
    checkpoint_every: int = opt(200, "also checkpoint every this many optimizer steps (0 = at epoch ends only)",
                                min=0)
    resume: str = opt("", "continue an interrupted run: OUTPUT_DIR/RUN_ID, its last.pt, or 'latest' (the run's "
                      "saved settings are used)")


@dataclass
class TrainConfig:
    """Everything `asr train` takes, by section."""
    data: DataConfig = section(DataConfig)
    features: FeatureConfig = section(FeatureConfig)
    model: ModelConfig = section(ModelConfig)
    augment: AugmentConfig = section(AugmentConfig)
    optim: OptimConfig = section(OptimConfig)
    tracking: TrackingConfig = section(TrackingConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)


@dataclass
class RecognizerConfig:
    """What inference needs besides the weights and the vocabulary: all a model checkpoint carries."""
    features: FeatureConfig = section(FeatureConfig)
    model: ModelConfig = section(ModelConfig)


@dataclass
class ValidateConfig:
    registered_model: str = opt(REGISTERED_MODEL, "registered model to load")
    model_stage: str = opt("Production", "stage to load (ignored when model_version or model_alias is set)")
    model_alias: str = opt("", "alias to load, e.g. production ('' = use the stage)")
    model_version: str = opt("", "version number to load ('' = use the alias or stage)")
    file_id: str = opt("1089-134686-0000", "LibriSpeech-style utterance id: SPEAKER-CHAPTER-UTTERANCE")
    dataset: str = opt("", "split folder (or a folder of splits) holding the file id; '' = search data/demo "
                       "and data/LibriSpeech")
    experiment: str = opt("SpeechRecognition", "MLflow experiment the validation run is logged to")


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
class DecodeConfig(Checked):
    """How log-probabilities become text, and how audio reaches the model, at inference time."""
    decoder: str = opt("greedy", "greedy (best path, fastest) or beam (CTC beam search; --lm/--lexicon imply it)",
                       ("greedy", "beam"))
    beam_size: int = opt(50, "beam search: hypotheses kept after each frame", min=1)
    beam_threshold: float = opt(25.0, "beam search: drop hypotheses scoring this much below the best", min=0)
    lm: str = opt("", "KenLM word n-gram LM for beam search, ARPA (e.g. from `asr lm build`) or KenLM binary")
    lexicon: str = opt("", "lexicon file (word, then its letters and |); '' = the LM's vocabulary, or no lexicon "
                       "without an LM")
    lm_weight: float = opt(1.5, "weight of the LM's log-probability (tune with `asr lm tune`)")
    word_score: float = opt(0.0, "score added per word (insertion bonus; tune with `asr lm tune`)")
    chunk_seconds: float = opt(20.0, "longer audio is cut at its quietest points into pieces at most this long",
                               min=1.0)
    precision: str = opt("fp32", "acoustic model arithmetic: fp32, bf16 autocast, or int8 (dynamic quantization)",
                         ("fp32", "bf16", "int8"))


@dataclass
class EvaluateConfig(DecodeConfig):
    model_uri: str = opt(DEFAULT_MODEL_URI, "model: models:/NAME@ALIAS or /VERSION, "
                         "runs:/RUN_ID/model, a run id, a checkpoint (.pt) or its OUTPUT_DIR/RUN_ID folder")
    dataset: str = opt("data/demo/test", "split folder(s) to score, comma-separated (LibriSpeech layout)")
    max_utterances: int = opt(0, "score at most this many utterances (0 = all)", min=0)
    batch_seconds: float = opt(200.0, "most padded audio seconds per model batch (bounds memory)", min=1.0)
    worst: int = opt(20, "utterances with the most errors kept in the logged table", min=0)
    experiment: str = opt("SpeechRecognition", "MLflow experiment the evaluation run is logged to")


@dataclass
class TuneConfig(EvaluateConfig):
    dataset: str = opt("data/demo/dev", "split folder(s) the grid is scored on (a dev split, not the test split)")
    lm_weights: str = opt("0,0.5,1,1.5,2,3", "LM weights to try, comma-separated")
    word_scores: str = opt("-2,-1,0,1,2", "word scores (insertion bonuses) to try, comma-separated")


def is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section"))


def fields(cls: type) -> list[dataclasses.Field]:
    """The settings of a config class, sections flattened, in declaration order."""
    return [leaf for f in dataclasses.fields(cls)
            for leaf in (fields(f.default_factory) if is_section(f) else [f])]


def to_dict(cfg: Any) -> dict[str, Any]:
    """Flat {setting: value} of a config (sections flattened), or of any other dataclass."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(to_dict(value) if is_section(f) else {f.name: value})
    return out


def from_dict(cls: type, values: dict[str, Any], *, strict: bool = False) -> Any:
    """Builds a config from flat settings, ignoring names the class does not know (e.g. other commands' options)
    unless `strict`. Raises ConfigError for a value out of range or, with `strict`, an unknown name."""
    if strict and (unknown := sorted(set(values) - {f.name for f in fields(cls)})):
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}")
    kwargs = {f.name: from_dict(f.default_factory, values) if is_section(f) else values[f.name]
              for f in dataclasses.fields(cls) if is_section(f) or f.name in values}
    return cls(**kwargs)


def load_settings(cls: type, path: str | Path) -> dict[str, Any]:
    """Settings from a JSON file (a recipe, or a run's logged config.json); unknown names are refused, since a
    misspelt setting silently left at its default would cost a training run."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read settings file {path}: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a JSON object of settings")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)}; see `asr train --help`")
    return {k: _TYPES[names[k].type](v) for k, v in values.items()}


def save(cfg: Any, path: Path) -> None:
    path.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def click_options(*classes: type) -> Callable[[Callable], Callable]:
    """Decorator adding one click option per field (a field shared by several configs appears once),
    spelled both --snake_case (as MLproject and main.py use) and --kebab-case."""
    import click

    unique = {f.name: f for cls in reversed(classes) for f in fields(cls)}

    def decorate(fn: Callable) -> Callable:
        for f in reversed(list(unique.values())):
            names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            kind = click.Choice(f.metadata["choices"]) if f.metadata.get("choices") else _TYPES[f.type]
            fn = click.option(*names, f.name, type=kind, default=f.default, show_default=True,
                              help=f.metadata["help"])(fn)
        return fn

    return decorate


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}

# MLproject parameter types, by dataclass field type
_MLPROJECT_TYPES = {"int": "float", "float": "float", "str": "string", "bool": "string"}


def render_mlproject() -> str:
    """The MLproject file, generated from the configs so its parameters can never drift from the code."""
    def params(cls: type, indent: str) -> list[str]:
        out = []
        for f in fields(cls):
            default = json.dumps(f.default)
            out.append(f"{indent}{f.name}: {{type: {_MLPROJECT_TYPES[f.type]}, default: {default}}}")
        return out

    def flags(cls: type) -> str:
        return " ".join(f"--{f.name} {{{f.name}}}" for f in fields(cls))

    lines = [
        "# Generated from asr/config.py by `python -m asr.config > MLproject`; edit the dataclasses, not this file.",
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
