"""Typed configs: the one source of truth for every hyperparameter and command parameter.

The CLI options, `main.py`, the MLproject parameters and the params logged to MLflow are all
derived from these dataclasses, so a new field shows up everywhere at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTERED_MODEL = "SpeechRecognitionModel"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@production"  # the Production model, by its alias


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that carries its own --help text (and allowed values)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # data
    train_data: str = opt("data/demo/train", "LibriSpeech-layout split folder(s) to train on, comma-separated")
    dev_data: str = opt("data/demo/dev", "split folder scored every epoch (val_loss, wer, cer)")
    test_data: str = opt("data/demo/test", "held-out split scored once after training ('' to skip)")
    max_utterances: int = opt(0, "use at most this many training utterances (0 = all)")
    max_seconds: float = opt(30.0, "skip (and count) training utterances longer than this many seconds")
    feature_cache: str = opt("", "folder for an on-disk feature cache keyed by the feature settings ('' = off)")
    workers: int = opt(1, "single-threaded processes computing augmented features during training (up-front "
                       "featurization uses one per core); 0 = everything in the main process")
    # features
    sample_rate: int = opt(16000, "audio is resampled to this rate (Hz) before feature extraction")
    n_mfcc: int = opt(13, "MFCC coefficients per frame (the model's input channels); few keep the spectral envelope, "
                       "not the pitch harmonics that differ between voices")
    n_mels: int = opt(80, "mel filterbank size the MFCCs are computed from")
    win_ms: float = opt(25.0, "analysis window length in milliseconds")
    hop_ms: float = opt(10.0, "hop between frames in milliseconds")
    # model
    time_stride: int = opt(3, "time stride of the first convolution; the GRUs see 1000/hop_ms/time_stride frames/s")
    cnn_layers: int = opt(1, "residual CNN blocks")
    cnn_channels: int = opt(16, "channels of every CNN layer")
    rnn_layers: int = opt(2, "bidirectional GRU layers")
    rnn_dim: int = opt(192, "hidden size of each GRU direction")
    dropout: float = opt(0.05, "dropout probability in CNN, GRU and classifier layers")
    # augmentation (training only; every strength 0 = off)
    freq_mask: int = opt(2, "SpecAugment: widest frequency mask in MFCC bins")
    time_mask: int = opt(10, "SpecAugment: widest of the two time masks, in frames")
    gain_db: float = opt(0.0, "waveform gain drawn from [-gain_db, +gain_db] dB")
    noise_snr_db: float = opt(0.0, "white noise at an SNR drawn from [noise_snr_db, noise_snr_db + 20] dB")
    shift_ms: float = opt(0.0, "random time shift of up to this many milliseconds either way")
    speed_perturb: float = opt(0.0, "speed factor drawn from [1 - speed_perturb, 1 + speed_perturb] (Kaldi-style)")
    # optimisation
    epoch: int = opt(12, "passes over the training data")
    batch: int = opt(16, "most utterances per batch")
    max_batch_seconds: float = opt(0.0, "most padded audio seconds per batch, from length-sorted buckets (0 = batch "
                                   "by utterance count alone)")
    accumulate: int = opt(1, "batches whose gradients are summed before each optimizer step")
    learning_rate: float = opt(3e-3, "peak learning rate of the one-cycle schedule (AdamW)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    grad_clip: float = opt(1.0, "clip the gradient norm to this value")
    patience: int = opt(0, "stop after this many epochs without a better dev WER/CER (0 = run every epoch)")
    precision: str = opt("auto", "autocast precision (weights and loss stay fp32); auto = bf16 where the CPU/GPU "
                         "has it, else fp32; fp16 is for GPUs", ("auto", "fp32", "bf16", "fp16"))
    threads: int = opt(0, "torch intra-op threads (0 = one per physical core)")
    seed: int = opt(0, "seed for weights, shuffling and augmentation")
    # tracking
    experiment: str = opt("SpeechRecognition", "MLflow experiment name")
    run_name: str = opt("", "MLflow run name ('' = MLflow picks one)")
    registered_model: str = opt(REGISTERED_MODEL, "Model Registry name every trained model is registered under")
    promote: str = opt("if-better", "promote the new version to Production: always, never, or only if its dev WER "
                       "beats the current Production version's", ("if-better", "always", "never"))
    output_dir: str = opt("outputs", "checkpoints go to OUTPUT_DIR/RUN_ID (last.pt to resume from, best.pt)")
    checkpoint_every: int = opt(200, "also checkpoint every this many optimizer steps (0 = at epoch ends only)")
    resume: str = opt("", "continue an interrupted run: OUTPUT_DIR/RUN_ID, its last.pt, or 'latest' (the run's "
                      "saved settings are used)")
    offline_ok: bool = opt(False, "when the tracking server is unreachable, train and log to the local store "
                           "sqlite:///mlflow.db instead, saying so (default: fail at once)")


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
class ServerConfig:
    backend_store_uri: str = opt("sqlite:///mlflow.db", "where runs and registered models are stored: a SQLite "
                                 "file, or postgresql://USER:PASSWORD@HOST:PORT/DB for a team")
    artifacts_destination: str = opt("./mlruns", "where the server stores the artifacts clients upload through it "
                                     "(a folder, s3://..., gs://...); clients need no storage credentials")
    host: str = opt("127.0.0.1", "interface to bind (0.0.0.0 exposes it to the network)")
    port: int = opt(5000, "port to listen on")
    workers: int = opt(4, "server processes answering requests (more for a busy team, 1 on a small machine)")
    allowed_hosts: str = opt("", "Host headers the server answers, comma-separated (e.g. mlflow.example.com,"
                             "10.0.0.5:5000); '' = MLflow's default: localhost and private IPs")
    cors_allowed_origins: str = opt("", "web origins allowed to change things through the API, comma-separated; the "
                                    "UI's own (e.g. http://mlflow.example.com:5000) for it to work from other "
                                    "machines; '' = MLflow's default: localhost pages only")


@dataclass
class DecodeConfig:
    """How log-probabilities become text, and how audio reaches the model, at inference time."""
    decoder: str = opt("greedy", "greedy (best path, fastest) or beam (CTC beam search; --lm/--lexicon imply it)",
                       ("greedy", "beam"))
    beam_size: int = opt(50, "beam search: hypotheses kept after each frame")
    beam_threshold: float = opt(25.0, "beam search: drop hypotheses scoring this much below the best")
    lm: str = opt("", "KenLM word n-gram LM for beam search, ARPA (e.g. from `asr lm build`) or KenLM binary")
    lexicon: str = opt("", "lexicon file (word, then its letters and |); '' = the LM's vocabulary, or no lexicon "
                       "without an LM")
    lm_weight: float = opt(1.5, "weight of the LM's log-probability (tune with `asr lm tune`)")
    word_score: float = opt(0.0, "score added per word (insertion bonus; tune with `asr lm tune`)")
    chunk_seconds: float = opt(20.0, "longer audio is cut at its quietest points into pieces at most this long")
    precision: str = opt("fp32", "acoustic model arithmetic: fp32, bf16 autocast, or int8 (dynamic quantization)",
                         ("fp32", "bf16", "int8"))


@dataclass
class EvaluateConfig(DecodeConfig):
    model_uri: str = opt(DEFAULT_MODEL_URI, "model: models:/NAME@ALIAS or /VERSION, "
                         "runs:/RUN_ID/model, a run id, a checkpoint (.pt) or its OUTPUT_DIR/RUN_ID folder")
    dataset: str = opt("data/demo/test", "split folder(s) to score, comma-separated (LibriSpeech layout)")
    max_utterances: int = opt(0, "score at most this many utterances (0 = all)")
    batch_seconds: float = opt(200.0, "most padded audio seconds per model batch (bounds memory)")
    worst: int = opt(20, "utterances with the most errors kept in the logged table")
    experiment: str = opt("SpeechRecognition", "MLflow experiment the evaluation run is logged to")


@dataclass
class TuneConfig(EvaluateConfig):
    dataset: str = opt("data/demo/dev", "split folder(s) the grid is scored on (a dev split, not the test split)")
    lm_weights: str = opt("0,0.5,1,1.5,2,3", "LM weights to try, comma-separated")
    word_scores: str = opt("-2,-1,0,1,2", "word scores (insertion bonuses) to try, comma-separated")


def fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Builds a config from a dict, ignoring keys the class does not know (e.g. other commands' options)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def load_settings(cls: type, path: str | Path) -> dict[str, Any]:
    """Settings from a JSON file (a recipe, or a run's logged config.json); unknown names are refused, since a
    misspelt setting silently left at its default would cost a training run."""
    from asr import UserError

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
