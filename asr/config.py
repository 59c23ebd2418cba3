"""Typed configs: how settings are declared, checked, flattened and turned into CLI options, and the settings a
trained model carries (features, model shape) or takes at inference (decoding).

Every command's settings (asr/settings.py) are dataclasses of `opt` fields: the CLI options, `main.py`, the
MLproject parameters, settings files and the params logged to MLflow all derive from them, so a new field shows
up everywhere at once. Settings may be nested in sections (each consumer takes its own: the feature extractor
`features`, the model `model`, ...), but every setting keeps one flat name, unique across sections, that the
CLI (--hop_ms), MLproject (-P hop_ms=...), settings files, config.json and MLflow params use.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr import UserError

REGISTERED_MODEL = "SpeechRecognitionModel"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@production"  # the Production model, by its alias


class ConfigError(UserError):
    """A setting that cannot work, refused before any data is read or compute is spent."""


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, *, min: float | None = None,
        below: float | None = None, flag: bool = False, required: bool = False,
        check: Callable[[Any], str | None] | None = None, exists: str = "", shown: str = "",
        needs: str = "") -> Any:
    """A dataclass field that carries its own --help text, allowed values, range (min <= value < below), whether
    the CLI takes it as a flag (--json) or requires it, a `check` (value -> what is wrong with it, or None) run
    whenever the config is built, whether its (non-empty) value names a "file" or "dir" that must `exist`
    (see check_paths: checked when a command starts, not whenever a config is built), and the bool setting it
    `needs` to mean anything (e.g. --lookahead, --streaming): without it on, the setting is left out of the
    MLflow params (to_params) and is not an MLproject parameter (see asr.settings.render_mlproject). `shown`: what
    --help says its default is, when that is not the value (a setting left out means something else, e.g. "the
    model's own"); the value itself stays the default everywhere (CLI, MLproject, settings files)."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "below": below,
                                            "flag": flag, "required": required, "check": check, "exists": exists,
                                            "shown": shown, "needs": needs})


def section(cls: type) -> Any:
    """A nested section of a config (its fields keep their flat names)."""
    return field(default_factory=cls, metadata={"section": True})


def check_ranges(cfg: Any) -> None:
    """Raises ConfigError naming the option when a field is outside its declared range or fails its check."""
    for f in dataclasses.fields(cfg):
        value, low, high = getattr(cfg, f.name), f.metadata.get("min"), f.metadata.get("below")
        if low is not None and value < low:
            raise ConfigError(f"--{f.name} must be at least {low:g}, got {value:g}")
        if high is not None and value >= high:
            raise ConfigError(f"--{f.name} must be below {high:g}, got {value:g}")
        # defaults pass their checks (tested), and skipping them keeps MLflow's import off a bad argument's path
        if (check := f.metadata.get("check")) and value != f.default and (problem := check(value)):
            raise ConfigError(f"--{f.name} {value!r}: {problem}")


def check_paths(cfg: Any) -> None:
    """Raises ConfigError naming the option and the path when a setting that names a file or folder that must
    exist (opt(exists=...)) names nothing there. Separate from building the config, which also happens for
    settings that will not be used (defaults, a resumed run's own settings)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_section(f):
            check_paths(value)
            continue
        kind = f.metadata.get("exists")
        for path in (value if isinstance(value, tuple) else (value,)) if kind else ():
            if path and not (Path(path).is_file() if kind == "file" else Path(path).is_dir()):
                raise ConfigError(f"--{f.name} {path}: no such {'file' if kind == 'file' else 'folder'}")


def as_list(value: Any, kind: type, name: str) -> tuple:
    """A list-valued setting from a comma-separated string (CLI, MLproject) or a JSON list (settings files)."""
    items = [v.strip() if isinstance(v, str) else v
             for v in (value.split(",") if isinstance(value, str) else value)]
    try:
        return tuple(kind(v) for v in items if v != "")
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated {kind.__name__} values, got {value!r}") from None


class Checked:
    """Mixin: list-valued settings are parsed, and ranges and choices checked, whenever a config is built."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.type in _LIST_TYPES:
                setattr(self, f.name, as_list(getattr(self, f.name), _LIST_TYPES[f.type], f.name))
                allowed = f.metadata.get("choices")
                if allowed and (wrong := [v for v in getattr(self, f.name) if v not in allowed]):
                    raise ConfigError(f"--{f.name}: {', '.join(wrong)} not among {', '.join(allowed)}")
            elif (allowed := f.metadata.get("choices")) and getattr(self, f.name) not in allowed:
                # the CLI checks its own choices; settings files, the Python API and served-model params come here
                raise ConfigError(f"--{f.name}: {getattr(self, f.name)!r} not among {', '.join(allowed)}")
        check_ranges(self)


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


DEFAULT_LOOKAHEAD = 2  # --lookahead: 2 frames of 30 ms with the default stride and hop


@dataclass
class ModelConfig(Checked):
    """The acoustic model's shape (a checkpoint carries it)."""
    time_stride: int = opt(3, "time stride of the first convolution; the GRUs see 1000/hop_ms/time_stride frames/s",
                           min=1)
    cnn_layers: int = opt(1, "residual CNN blocks", min=0)
    cnn_channels: int = opt(16, "channels of every CNN layer", min=1)
    rnn_layers: int = opt(2, "GRU layers (bidirectional; unidirectional with --streaming)", min=1)
    rnn_dim: int = opt(192, "hidden size of each GRU direction", min=1)
    dropout: float = opt(0.05, "dropout probability in CNN, GRU and classifier layers", min=0, below=1)
    streaming: bool = opt(False, "a model that can transcribe live (asr.streaming): unidirectional GRUs, a look-ahead "
                          "of --lookahead frames after them, and causal features normalized with statistics of the "
                          "training set that the model stores (default: bidirectional GRUs, per-utterance "
                          "normalization)")
    lookahead: int = opt(DEFAULT_LOOKAHEAD, "--streaming only: future frames (at the GRUs' frame rate) the "
                         "look-ahead layer after the GRUs sees; the latency it adds is lookahead * time_stride * "
                         "hop_ms (0 = none: strictly causal)", min=0, needs="streaming")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.streaming and self.lookahead != DEFAULT_LOOKAHEAD:
            raise ConfigError(f"--lookahead {self.lookahead} needs --streaming: a bidirectional model sees the whole "
                              "utterance and has no look-ahead layer")


# The model's blocks, input to output, by their attribute names in asr.model.SpeechModel (--freeze takes them)
MODEL_BLOCKS = ("stem", "cnn", "proj", "rnns", "lookahead", "classifier")  # lookahead: streaming models


@dataclass
class RecognizerConfig:
    """What inference needs besides the weights and the vocabulary: all a model checkpoint carries."""
    features: FeatureConfig = section(FeatureConfig)
    model: ModelConfig = section(ModelConfig)


MODELS_OWN = "the model's own"  # what --help shows as the default of a decoder setting left out


@dataclass
class DecodeConfig(Checked):
    """How log-probabilities become text, and how audio reaches the model, at inference time. A decoder setting
    left out keeps the model's own."""
    decoder: str = opt("greedy", "greedy (best path, fastest) or beam (CTC beam search; --lm/--lexicon imply it); a "
                       "model trained with an LM decodes with beam + LM by default", ("greedy", "beam"),
                       shown=f"{MODELS_OWN}, else greedy")
    beam_size: int = opt(50, "beam search: hypotheses kept after each frame", min=1, shown=MODELS_OWN)
    beam_threshold: float = opt(25.0, "beam search: drop hypotheses scoring this much below the best", min=0,
                                shown=MODELS_OWN)
    lm: str = opt("", "KenLM word n-gram LM for beam search, ARPA (e.g. from `asr lm build`) or KenLM binary",
                  exists="file", shown=f"{MODELS_OWN}, if it has one")
    lexicon: str = opt("", "lexicon file (word, then its letters and |); '' = the LM's vocabulary, or no lexicon "
                       "without an LM", exists="file", shown=MODELS_OWN)
    lm_weight: float = opt(1.5, "weight of the LM's log-probability (tune it with `asr lm tune`)",
                           shown=f"{MODELS_OWN}, tuned on dev")
    word_score: float = opt(0.0, "score added per word (insertion bonus)", shown=f"{MODELS_OWN}, tuned on dev")
    precision: str = opt("fp32", "acoustic model arithmetic: fp32, bf16 autocast, int8 (dynamic quantization), or "
                         "auto (bf16 only if a probe of this model's forward pass, cached, measures it 5% faster)",
                         ("fp32", "bf16", "int8", "auto"))
    chunk_seconds: float = opt(20.0, "longer audio is cut at its quietest points into pieces at most this long",
                               min=1.0)


def is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section"))


def fields(cls: type) -> list[dataclasses.Field]:
    """The settings of a config class, sections flattened, in declaration order, less those it inherits but does
    not use (its `unused` class attribute: a tuple of names, left at their defaults and offered nowhere: not on
    the command line, in MLproject, settings files or logged params)."""
    unused = getattr(cls, "unused", ())
    return [leaf for f in dataclasses.fields(cls) if f.name not in unused
            for leaf in (fields(f.default_factory) if is_section(f) else [f])]


def cli_value(value: Any) -> Any:
    """A setting as the command line and MLflow params spell it: lists comma-separated."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


def to_params(cfg: Any) -> dict[str, Any]:
    """Flat settings as MLflow params (lists comma-separated, as they were given), less those that mean nothing
    in this config: a setting whose `needs` (see opt) is off, e.g. --lookahead of a bidirectional model."""
    flat = to_dict(cfg)
    offered = {f.name: f.metadata.get("needs") for f in fields(type(cfg))}  # less the class's `unused`
    return {k: cli_value(v) for k, v in flat.items() if k in offered and (not offered[k] or flat[offered[k]])}


def to_dict(cfg: Any) -> dict[str, Any]:
    """Flat {setting: value} of a config (sections flattened), or of any other dataclass."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(to_dict(value) if is_section(f) else {f.name: value})
    return out


def given_settings(cfg: Any, given: Collection[str] | None) -> set[str]:
    """The settings of `cfg` the user asked for: `given`, or with None (callers that pass every setting, as the
    MLproject command does) those that differ from the defaults of its class."""
    if given is not None:
        return set(given)
    defaults = to_dict(type(cfg)())
    return {k for k, v in to_dict(cfg).items() if v != defaults[k]}


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
    settings = {}
    for k, v in values.items():
        kind = _TYPES.get(names[k].type, tuple)
        if kind is tuple and not isinstance(v, str | list):
            raise ConfigError(f"{path}: {k} must be a list or a comma-separated string, got {v!r}")
        if kind is tuple:  # kept as given: building the config splits a string at its commas and checks the items
            settings[k] = v
            continue
        try:
            settings[k] = kind(v) if kind is not bool or isinstance(v, bool) else _no_bool(k, v, path)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: {k} must be {names[k].type}, got {v!r}") from None
    return settings


def _no_bool(name: str, value: Any, path: str | Path) -> bool:
    raise ConfigError(f"{path}: {name} must be true or false, got {value!r}")


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
            if f.metadata.get("flag"):
                fn = click.option(*names, f.name, is_flag=True, default=f.default, help=f.metadata["help"])(fn)
                continue
            listed = f.type in _LIST_TYPES  # a comma-separated string, parsed (and its choices checked) by Checked
            kind = click.Choice(f.metadata["choices"]) if f.metadata.get("choices") and not listed \
                else _TYPES.get(f.type, str)
            given = {"required": True} if f.metadata.get("required") else \
                {"default": cli_value(f.default),  # a default, even None, satisfies required
                 "show_default": f.metadata.get("shown") or True}  # a string: --help shows it for the value
            if f.type == "bool":  # --name alone means true; --name true/false as MLproject and main.py pass it
                given.update(is_flag=False, flag_value=True)
            fn = click.option(*names, f.name, type=kind, help=f.metadata["help"], **given)(fn)
        return fn

    return decorate


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_LIST_TYPES = {"tuple[str, ...]": str, "tuple[float, ...]": float}
