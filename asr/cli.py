"""The `asr` command line: train, validate, serve, and build or fetch data."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from asr import UserError
from asr.config import DecodeConfig, check_paths, click_options, from_dict, load_settings
from asr.settings import (
    BenchDataConfig,
    BenchInferConfig,
    BenchLMConfig,
    BenchStreamConfig,
    BenchTrainConfig,
    DownloadConfig,
    EvaluateConfig,
    ExportConfig,
    FeaturesConfig,
    LMBuildConfig,
    PromoteConfig,
    ServerConfig,
    StreamServerConfig,
    SynthConfig,
    TrainConfig,
    TranscribeConfig,
    TuneConfig,
    ValidateConfig,
)
from asr.tracking.requirements import torchaudio_load_error

if TYPE_CHECKING:
    from asr.data.dataset import LeftOut


def friendly_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from None
        except (OSError, RuntimeError) as e:  # a broken install: torchaudio's library built for another torch
            message = torchaudio_load_error(e)
            if message is None:
                raise
            raise click.ClickException(message) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def run_train(cfg: TrainConfig, given: set[str] | None) -> None:
    """Trains as `cfg` says; `given` names the settings the user gave (what a --resume may not silently drop; None:
    those that differ from the defaults)."""
    from asr.training.train import train

    train(cfg, progress=show_progress(), given=given)


def given_options(options: dict) -> set[str]:
    """The options given on the command line (or in the environment), not left at their defaults."""
    ctx = click.get_current_context()
    return {k for k in options
            if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}


def decoder_options(options: dict) -> dict:
    """The decoder settings given on the command line: they change the model's own decoder, the others keep it.
    Raises DecoderError for settings that contradict each other (asr.decoding.check_request)."""
    from asr.decoding import check_request

    decoding = {f.name for f in dataclasses.fields(DecodeConfig)}
    given = {k: options[k] for k in given_options(options) if k in decoding}
    check_request(given)
    return given


def settings(cls: type, options: dict):
    """A command's settings, checked before anything is read: values (as the config is built) and the files and
    folders the settings name."""
    cfg = from_dict(cls, options)
    check_paths(cfg)
    return cfg


def run_validate(cfg: ValidateConfig) -> None:
    from asr.evaluation.validate import validate

    r = validate(cfg)
    click.echo(f"file id:   {r.utterance.file_id}  ({r.utterance.path})")
    click.echo(f"model:     {r.model_uri}" + (f" (version {r.source.version})" if r.source.version else ""))
    click.echo(f"target:    {r.target}")
    click.echo(f"predicted: {r.prediction}")
    click.echo(f"WER {r.wer:.3f}  CER {r.cer:.3f}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """Train, track, register, serve and validate DeepSpeech2-style speech recognition models with MLflow.

    Runs are tracked in $MLFLOW_TRACKING_URI (default sqlite:///mlflow.db with artifacts in ./mlruns).
    """
    quiet_mlflow_bars()


def with_settings_file(options: dict, config_file: str | None) -> tuple[TrainConfig, set[str]]:
    """Settings file values, overridden by the options actually given on the command line; and the names of the
    settings given either way."""
    given = {k: options[k] for k in given_options(options)}
    if not config_file:
        return from_dict(TrainConfig, options), set(given)
    from_file = load_settings(TrainConfig, config_file)
    return from_dict(TrainConfig, {**options, **from_file, **given}), set(given) | set(from_file)


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON file of settings (e.g. recipes/train-clean-5.json, or a run's config.json); options "
                   "given here override it")
@click_options(TrainConfig)
@friendly_errors
def train(config_file: str | None, **options) -> None:
    """Train a model, log it to MLflow, register it and (by policy) promote it to Production.

    Example: asr train --train_data data/LibriSpeech/train-clean-100 --dev_data data/LibriSpeech/dev-clean

    Ctrl-C (or SIGTERM) finishes the current step, saves OUTPUT_DIR/RUN_ID/last.pt and marks the MLflow run
    KILLED; `asr train --resume OUTPUT_DIR/RUN_ID` (or `--resume latest`) continues it. Data parallel:
    torchrun --nproc_per_node N -m asr train ...
    """
    run_train(*with_settings_file(options, config_file))


@main.command()
@click_options(ValidateConfig)
@friendly_errors
def validate(**options) -> None:
    """Transcribe one utterance by file id with a registered model and print predicted vs. target text.

    Example: asr validate --file_id 1089-134686-0000 --dataset data/LibriSpeech/test-clean
    """
    run_validate(settings(ValidateConfig, options))


@main.command()
@click_options(PromoteConfig)
@friendly_errors
def promote(**options) -> None:
    """Promote a registered model version to Production by hand, whatever its dev WER: alias production and stage
    Production (the previous Production version archived), as training's promotion does.

    Example: asr promote --registered_model SpeechRecognitionModel --model_version 3
    """
    from asr.tracking import registry, store

    cfg = settings(PromoteConfig, options)
    store.setup_uri(registry.model_uri(cfg.registered_model, version=cfg.model_version))
    click.echo(f"{cfg.registered_model} {registry.promote_by_hand(cfg.registered_model, cfg.model_version).describe()}")


@main.command()
@click_options(ServerConfig)
@friendly_errors
def server(**options) -> None:
    """Run the MLflow tracking server and UI in the foreground (Ctrl-C stops it).

    Open http://HOST:PORT and look under Models for the registered model. Artifacts are proxied: clients
    upload and download them through this server (mlflow-artifacts:/ URIs), so they need no storage credentials.
    Team setup (README): --backend_store_uri postgresql://USER:PASSWORD@HOST:5432/DB --host 0.0.0.0
    --allowed_hosts mlflow.example.com:5000; clients set MLFLOW_TRACKING_URI=http://mlflow.example.com:5000.
    Without --backend_store_uri, a database in $MLFLOW_TRACKING_URI (sqlite:, postgresql:, ...) is the store.
    """
    from asr import redact
    from asr.listening import check_address

    cfg = from_dict(ServerConfig, options)
    check_address(cfg.host, cfg.port)  # a port in use is said at once, not by MLflow's workers after seconds
    if "backend_store_uri" not in given_options(options):
        store, note = store_from_environment(os.environ.get("MLFLOW_TRACKING_URI", ""), cfg.backend_store_uri)
        cfg = dataclasses.replace(cfg, backend_store_uri=store)
        if note:
            click.echo(note, err=True)
    argv = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts", "--artifacts-destination",
            cfg.artifacts_destination, "--host", cfg.host, "--port", str(cfg.port), "--workers", str(cfg.workers)]
    if cfg.allowed_hosts:
        argv += ["--allowed-hosts", cfg.allowed_hosts]
    if cfg.cors_allowed_origins:
        argv += ["--cors-allowed-origins", cfg.cors_allowed_origins]
    # The store URI goes through the environment, not argv: a database password in argv is visible to every user
    # of the machine (ps, /proc/PID/cmdline); the environment only to its owner.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": with_psycopg2(cfg.backend_store_uri)}
    click.echo(f"MLflow UI on http://{cfg.host}:{cfg.port} (store {redact(cfg.backend_store_uri)}); "
               "Ctrl-C stops it")
    os.execve(sys.executable, argv, env)


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy's, which MLflow's stores take


def store_from_environment(tracking_uri: str, default: str) -> tuple[str, str | None]:
    """The store `asr server` serves when --backend_store_uri is not given, and a note (one line) when
    $MLFLOW_TRACKING_URI (`tracking_uri`, '' when unset) is set but not used: the store it names when it is a
    database URI (scheme in DATABASE_SCHEMES, a +driver allowed: what `asr train` there logs to), else `default`
    (an http(s) URI names a server, this one's clients' setting, not where it keeps its runs)."""
    scheme = tracking_uri.partition(":")[0].partition("+")[0].lower()
    if not tracking_uri or scheme in DATABASE_SCHEMES:
        return tracking_uri or default, None
    from asr import redact

    kind = "a tracking server, not a store" if scheme in ("http", "https") else "no database"
    return default, (f"$MLFLOW_TRACKING_URI={redact(tracking_uri)} names {kind}: serving {default}; "
                     "--backend_store_uri chooses the store")


def with_psycopg2(uri: str) -> str:
    """postgresql:// with the psycopg2 driver named. SQLAlchemy 2.1 would pick psycopg 3, whose typed parameters
    break MLflow's model registry on PostgreSQL (integer versions compared with VARCHAR: mlflow/mlflow#24592)."""
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1) if uri.startswith("postgresql://") else uri


def show_progress() -> bool:
    """Progress bars on a terminal; elsewhere, with $ASR_PROGRESS set, plain lines (see asr.data.progress)."""
    from asr.data.progress import wanted

    return wanted()


def quiet_mlflow_bars() -> None:
    """Off a terminal, MLflow's own artifact progress bars (a model's files fetched or logged) stay off too: each
    redraw would be kept in the log. $MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, when set, still decides."""
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@main.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click_options(TranscribeConfig)
@friendly_errors
def transcribe(files: tuple[str, ...], **options) -> None:
    """Transcribe audio files (WAV, FLAC, OGG, ... any rate, mono or stereo, any length); one line per file.

    Decodes with the model's own decoder (its LM and tuned settings; greedy for a model trained without an LM);
    the decoder options given change it (--decoder greedy: best path).

    Example: asr transcribe talk.flac --decoder beam --lm lm.arpa

    Live: ffmpeg -i talk.flac -f s16le -ac 1 -ar 16000 - | asr transcribe --stream -, or asr transcribe --mic
    """
    import json

    from asr.audio import load_audio
    from asr.loading import load_transcriber
    from asr.tracking.store import setup_uri

    cfg = settings(TranscribeConfig, options)
    if cfg.stream or cfg.mic:
        transcribe_stream(files, cfg, options)
        return
    if problem := ignored_option(cfg, "files"):
        raise UserError(problem)
    if not files:
        ctx = click.get_current_context()
        raise click.MissingParameter(ctx=ctx, param=next(p for p in ctx.command.params if p.name == "files"))
    for path in files:  # all of them before the model loads, and before any is transcribed
        if path == "-" and not Path(path).is_file():
            raise UserError("- (stdin) is read as it arrives: give --stream - (raw PCM, WAV or FLAC bytes on stdin)")
        if not Path(path).is_file():
            raise click.ClickException(f"{path}: no such file")
    setup_uri(cfg.model_uri)
    transcriber = load_transcriber(cfg.model_uri, overrides=decoder_options(options))
    for path in files:  # one file at a time: a long recording never shares memory with the next
        wave = load_audio(path, transcriber.sample_rate)
        text = transcriber.transcribe([wave])[0]
        if cfg.json:
            seconds = round(wave.numel() / transcriber.sample_rate, 3)
            click.echo(json.dumps({"file": path, "text": text, "seconds": seconds}))
        else:
            click.echo(text if len(files) == 1 else f"{path}\t{text}")


# The options of `asr transcribe` that only some of its inputs use: given with another input, one would be ignored,
# so it is refused instead (ignored_option). Inputs: "files" (offline), "file" (--stream FILE), "stdin" (--stream -)
# and "mic". Option: (the inputs that use it, what the refusal says after --OPTION).
LIVE_INPUTS = frozenset({"file", "stdin", "mic"})
RAW_ONLY = "needs --stream - (raw PCM on stdin): an audio file or the microphone says its own format and rate"
INPUT_ONLY: dict[str, tuple[frozenset[str], str]] = {
    "realtime": (frozenset({"file"}), "needs --stream FILE: it paces a file; stdin and the microphone arrive at "
                                      "their own pace"),
    "partials": (LIVE_INPUTS, "needs --stream (or --mic)"),
    "chunk_ms": (LIVE_INPUTS, "needs --stream (or --mic)"),
    "endpoint_ms": (LIVE_INPUTS, "needs --stream (or --mic)"),
    "raw_format": (frozenset({"stdin"}), RAW_ONLY),
    "raw_rate": (frozenset({"stdin"}), RAW_ONLY),
    "chunk_seconds": (frozenset({"files"}), "cuts whole files into pieces: leave it out with --stream or --mic, "
                                            "whose audio comes in --chunk_ms pieces"),
}


def ignored_option(cfg: TranscribeConfig, source: str) -> str | None:
    """The refusal (one line) of the first option of `cfg` set away from its default that input `source` ("files",
    "file", "stdin" or "mic"; see INPUT_ONLY) would ignore, or None."""
    defaults = TranscribeConfig()
    for name, (used_by, says) in INPUT_ONLY.items():
        if source not in used_by and getattr(cfg, name) != getattr(defaults, name):
            return f"--{name} {says}"
    return None


def streaming_threads() -> None:
    """One torch thread per stream: a chunk's work is a few small ops, which more threads only slow down (a
    stream of 16 s took 0.45 s on one thread and 12-25 s on two while another job loaded the 2-core machine)."""
    import torch

    torch.set_num_threads(1)


def stream_problem(files: tuple[str, ...], cfg: TranscribeConfig) -> str | None:
    """What is wrong with the inputs and options of `asr transcribe --stream` or `--mic`, or None."""
    if cfg.mic and files:
        return f"--mic captures from the microphone: give no FILES with it (got {' '.join(files)})"
    if not cfg.mic and len(files) != 1:
        return ("--stream takes one input: a file, or - for stdin (or --mic without files)" if files
                else "--stream needs an input: a file, or - for stdin (or use --mic)") + \
            (f"; got {len(files)}" if files else "")
    if cfg.partials and not cfg.json:
        return "--partials prints JSON lines: give --json too (on a terminal, partials refresh one line anyway)"
    return ignored_option(cfg, "mic" if cfg.mic else "stdin" if files[0] == "-" else "file")


def transcribe_stream(files: tuple[str, ...], cfg: TranscribeConfig, options: dict) -> None:
    """`asr transcribe --stream` and `--mic`: the input is checked (stdin sniffed, the file opened, the microphone
    found) before the model loads; segments print as they end; Ctrl-C or SIGTERM finalizes the open segment and exits
    0."""
    from asr import live
    from asr.audio import open_audio
    from asr.loading import load_transcriber
    from asr.streaming import StreamingRecognizer
    from asr.tracking.store import setup_uri

    if problem := stream_problem(files, cfg):
        raise UserError(problem)
    source = "mic" if cfg.mic else files[0]
    if source == "mic":
        live.check_microphone()
    elif source == "-":
        if sys.stdin.isatty():
            raise UserError(f"stdin is a terminal: pipe audio into it ({live.RAW_HELP}), or use --mic")
        stdin = sys.stdin.buffer
        kind, head = live.stdin_kind(stdin)
    else:
        audio = open_audio(source)
    setup_uri(cfg.model_uri)
    streaming_threads()
    recognizer = StreamingRecognizer(load_transcriber(cfg.model_uri, overrides=decoder_options(options)),
                                     endpoint_ms=cfg.endpoint_ms)
    rate = recognizer.sample_rate
    chunk = max(1, round(cfg.chunk_ms * rate / 1000))
    if source == "mic":
        chunks = live.mic_chunks(rate, chunk)
    elif source == "-":
        chunks = live.stream_chunks(stdin, kind, head, rate, chunk, cfg.raw_format, cfg.raw_rate,
                                    say=lambda line: click.echo(line, err=True))
    else:
        chunks = live.file_chunks(audio, rate, chunk, source)
        chunks = live.paced(chunks, rate) if cfg.realtime else chunks
    printer = live.Printer(sys.stdout, json_lines=cfg.json, partials=cfg.partials, tty=sys.stdout.isatty())
    try:
        with live.sigterm_as_interrupt():  # SIGTERM (kill, a service stop) keeps what was heard, as Ctrl-C does
            live.recognize(chunks, recognizer, printer)
    finally:
        printer.close()


@main.command("serve-stream")
@click_options(StreamServerConfig)
@friendly_errors
def serve_stream(**options) -> None:
    """Live transcription over WebSocket: clients stream raw PCM and get partial and final text back as JSON.

    The model loads once and is shared by every connection; each connection is one stream. Protocol (README,
    "Real-time transcription"): binary messages of mono s16le PCM at the model's rate (optionally declared first
    with {"sample_rate": 16000, "format": "s16le"}), then {"type": "end"}; the server sends {"type": "partial"},
    {"type": "final", "start", "end"}, {"type": "error"} and, after the end, {"type": "done"}.

    Example: asr serve-stream --model_uri models:/SpeechRecognitionModel@production --port 8765
    """
    from asr.listening import check_address

    cfg = settings(StreamServerConfig, options)
    check_address(cfg.host, cfg.port)  # a port in use is said at once, not after torch's import and the model's load

    from asr.loading import load_transcriber
    from asr.stream_server import Limits, StreamSettings, run
    from asr.tracking.store import setup_uri

    setup_uri(cfg.model_uri)
    streaming_threads()
    transcriber = load_transcriber(cfg.model_uri, overrides=decoder_options(options))
    run(transcriber, cfg.host, cfg.port,
        Limits(cfg.max_message_bytes, cfg.max_connections, cfg.max_session_seconds),
        StreamSettings(cfg.endpoint_ms, cfg.max_segment_s), cfg.threads, say=lambda line: click.echo(line))


@main.command()
@click_options(EvaluateConfig)
@friendly_errors
def evaluate(**options) -> None:
    """Corpus WER/CER of a model on whole splits, logged to MLflow with a table of the worst utterances.

    Decodes with the model's own decoder unless decoder options are given (as `asr transcribe`).

    Example: asr evaluate --dataset data/LibriSpeech/test-clean --decoder greedy
    """
    from asr.evaluation.evaluate import evaluate as run

    cfg = settings(EvaluateConfig, options)
    s = run(cfg, progress=show_progress(), given=set(decoder_options(options)))
    say_skipped(s.unreadable, s.left_out)
    click.echo(f"{','.join(cfg.dataset)}: {s.utterances} utterances{skipped_summary(s.unreadable, s.left_out)}, "
               f"{s.audio_seconds / 60:.1f} min of audio, {s.audio_seconds / max(s.seconds, 1e-9):.0f} audio-s/s")
    click.echo(f"WER {s.wer:.3f}  CER {s.cer:.3f}  over {s.utterances} utterances")


def say_skipped(unreadable: list[str], left_out: list[LeftOut]) -> None:
    """Each audio file skipped and each corpus entry the reader left out, once, with its reason, on stderr (stdout
    holds the scores)."""
    from asr.data.dataset import left_out_lines

    for message in dict.fromkeys(unreadable):
        click.echo(f"skipping {message}", err=True)
    for line in left_out_lines(left_out):
        click.echo(line, err=True)


def skipped_summary(unreadable: list[str], left_out: list[LeftOut]) -> str:
    """' (1 unreadable, skipped; 2 left out by the corpus reader)', or '' when nothing was."""
    parts = [f"{len(unreadable)} unreadable, skipped"] * bool(unreadable)
    parts += [f"{len(left_out)} left out by the corpus reader"] * bool(left_out)
    return f" ({'; '.join(parts)})" if parts else ""


@main.group()
def lm() -> None:
    """Build and tune word n-gram language models for beam search."""


@lm.command("build")
@click_options(LMBuildConfig)
@friendly_errors
def lm_build(**options) -> None:
    """Word n-gram LM (interpolated modified Kneser-Ney) in ARPA format, from text or training transcripts.

    Example: asr lm build --from-dataset data/demo/train --order 3 --out lm.arpa
    """
    from asr.evaluation.evaluate import utterances_of
    from asr.lm import arpa_words, build_arpa, read_sentences, write_lexicon
    from asr.loading import load_acoustic_model
    from asr.text import ENGLISH_TEXT
    from asr.tracking.store import setup_uri

    cfg = settings(LMBuildConfig, options)
    text = ENGLISH_TEXT
    if cfg.model_uri:  # its vocabulary and language: the LM then speaks the model's alphabet
        setup_uri(cfg.model_uri)
        text = load_acoustic_model(cfg.model_uri)[3]
    sentences = (read_sentences(cfg.text, text) if cfg.text
                 else (text.normalized(u.transcript) for u in utterances_of(cfg.from_dataset)))
    summary = build_arpa(sentences, cfg.order, cfg.out)
    click.echo(f"{cfg.out}: order {summary['order']}, {summary['vocab']} words, {summary['sentences']} sentences, "
               f"n-grams {summary['ngrams']}")
    if cfg.lexicon:
        click.echo(f"{cfg.lexicon}: {write_lexicon(arpa_words(cfg.out), cfg.lexicon, text)} words")


@lm.command("tune")
@click_options(TuneConfig)
@friendly_errors
def lm_tune(**options) -> None:
    """Grid-search the LM weight and word score on a dev split (the model runs once) and log the grid to MLflow.

    Tunes --lm or, without it, the model's own LM and lexicon (with its own decoder settings, the options given
    changing them).

    Example: asr lm tune --dataset data/demo/dev, or asr lm tune --lm lm.arpa --dataset data/demo/dev
    """
    from asr.evaluation.evaluate import tune

    cfg = settings(TuneConfig, options)
    result = tune(cfg, progress=show_progress(), given=set(decoder_options(options)))
    say_skipped(result.unreadable, result.left_out)
    whose = f"the LM of {cfg.model_uri}" if result.models_own else "--lm"
    lexicon = result.lexicon or "the LM's words"
    click.echo(f"tuning {whose}: {result.lm} (lexicon: {lexicon})")
    click.echo(f"{','.join(cfg.dataset)}: {result.utterances} utterances"
               f"{skipped_summary(result.unreadable, result.left_out)}")
    for p in result.grid:
        click.echo(f"lm_weight {p['lm_weight']:<5g} word_score {p['word_score']:<5g} WER {p['wer']:.3f}  "
                   f"CER {p['cer']:.3f}")
    b = result.best
    click.echo(f"best: --lm_weight {b['lm_weight']:g} --word_score {b['word_score']:g}  (WER {b['wer']:.3f}  "
               f"CER {b['cer']:.3f})")


@main.command()
@click_options(ExportConfig)
@friendly_errors
def export(**options) -> None:
    """Export the acoustic model (features -> log-probabilities) to TorchScript or ONNX, checked against PyTorch.

    Without --format, the file's extension says which: .onnx is ONNX; .pt, .ts (or a folder) TorchScript.

    Inputs: features (batch, n_mfcc, frames) float32 and lengths (batch,) int64; outputs: log_probs
    (batch, frames', classes) and out_lengths. The file carries asr.json (vocabulary, blank, MFCC settings,
    decoder): examples/onnx_transcribe.py turns audio into text with it and no asr package.
    """
    import torch

    from asr.export import export_model, format_for, max_abs_diff, quantize_dynamic
    from asr.loading import load_acoustic_model
    from asr.tracking.store import setup_uri

    cfg = settings(ExportConfig, options)
    fmt = format_for(cfg.out, cfg.format if "format" in given_options(options) else None)  # before the model loads
    setup_uri(cfg.model_uri)
    recognizer, model, own, text = load_acoustic_model(cfg.model_uri)  # decoder settings written, the LM never read
    n_mfcc = recognizer.features.n_mfcc
    path = export_model(model, fmt, cfg.out, config=recognizer, decode=own, quantize=cfg.quantize, text=text)
    g = torch.Generator().manual_seed(0)
    feats, lengths = torch.randn(2, n_mfcc, 700, generator=g), torch.tensor([700, 450])
    diff = max_abs_diff(model, path, fmt, feats, lengths)
    if cfg.quantize:
        exact = max_abs_diff(quantize_dynamic(model), path, fmt, feats, lengths)
        click.echo(f"{path}: {fmt} int8, max abs log-prob diff vs PyTorch int8 {exact:.2e}, vs fp32 {diff:.2e}")
    else:
        click.echo(f"{path}: {fmt}, max abs log-prob diff vs PyTorch {diff:.2e}")


@main.group()
def data() -> None:
    """Build the offline demo corpus, download LibriSpeech, or featurize splits into the feature store."""


@data.command()
@click_options(SynthConfig)
@friendly_errors
def synth(**options) -> None:
    """Synthesize the demo corpus (text-to-speech, LibriSpeech layout) so everything runs with no download."""
    from asr.data.synth.corpus import synthesize_corpus

    cfg = from_dict(SynthConfig, options)
    summary = synthesize_corpus(cfg, progress=show_progress())
    for split in ("train", "dev", "test"):
        s = summary[split]
        click.echo(f"{Path(cfg.root) / split}: {s['utterances']} utterances, {s['minutes']:.1f} min, "
                   f"{len(s['voices'])} voices")


@data.command()
@click_options(DownloadConfig)
@friendly_errors
def download(**options) -> None:
    """Download, verify (sha256) and extract a LibriSpeech split."""
    from asr.data.download import DEFAULT_MIRROR, download_split

    cfg = from_dict(DownloadConfig, options)
    click.echo(f"ready: {download_split(cfg.split, Path(cfg.root), cfg.mirror or DEFAULT_MIRROR, show_progress())}")


@data.command()
@click_options(FeaturesConfig)
@friendly_errors
def features(**options) -> None:
    """Featurize splits into the feature store that `asr train` with the same data and feature options reads.

    Resumable and idempotent: complete shards are kept. Split the work over machines sharing the store's folder
    with --shard i/n (machine i of n); under torchrun, `asr train` splits it over its ranks itself.

    Example: asr data features --train_data data/LibriSpeech/train-clean-100 --dev_data data/LibriSpeech/dev-clean
    --test_data data/LibriSpeech/test-clean --feature_cache /data/features --shard 0/4
    """
    from asr.data.feature_store import Featurized, featurize, store_folder, store_root
    from asr.features import FeatureExtractor
    from asr.settings import parse_part
    from asr.training.batches import load_dataset

    cfg = settings(FeaturesConfig, options)
    part, root = parse_part(cfg.shard), store_root(cfg.feature_cache)
    extractor = FeatureExtractor.from_config(cfg.features, causal=cfg.streaming)
    workers = cfg.workers or min(8, os.cpu_count() or 1)
    total = Featurized()
    for name, dirs, limit in (("train", cfg.train_data, cfg.max_utterances), ("dev", cfg.dev_data, 0),
                              ("test", cfg.test_data, 0)):
        if not dirs:
            continue
        dataset = load_dataset(dirs, extractor, limit, cfg.seed)
        folder = store_folder(root, extractor, dataset.utterances)
        done = featurize(dataset.utterances, extractor, folder, part, workers, show_progress(), f"features {name}")
        click.echo(f"{name} ({','.join(dirs)}): {done.written} shards written, {done.skipped} already complete, "
                   f"{done.unreadable} unreadable files; {folder}")
        total.add(done)
    click.echo(f"part {cfg.shard}: {total.written} shards written, {total.skipped} skipped (already complete), "
               f"{total.unreadable} unreadable files")


@main.group()
def bench() -> None:
    """Benchmarks that print their numbers and write them to BENCHMARKS.md."""


@bench.command("train")
@click_options(BenchTrainConfig)
@friendly_errors
def bench_train(**options) -> None:
    """Training throughput (audio-s/s) of the real training path vs. a naive one, FLOP/s against the machine's
    matmul peak, and peak memory, for the default and the classic (spine-seed, ~3.5 M) model configs."""
    from asr.bench.train import run

    cfg = from_dict(BenchTrainConfig, options)
    run(cfg.data, cfg.utterances, cfg.seconds, list(cfg.config), Path(cfg.out), say=click.echo)


@bench.command("infer")
@click_options(BenchInferConfig)
@friendly_errors
def bench_infer(**options) -> None:
    """Real-time factor (batch 1, a 10-second clip) and split throughput with WER/CER, for greedy and beam
    search (with and without an LM), in fp32, bf16 and int8."""
    from asr.bench.infer import run
    from asr.tracking.store import check_model_source

    c = settings(BenchInferConfig, options)
    check_model_source(c.model_uri)
    run(c.model_uri, c.data, c.lm, c.beam_size, c.repeats, Path(c.out), c.section, say=click.echo)


@bench.command("stream")
@click_options(BenchStreamConfig)
@friendly_errors
def bench_stream(**options) -> None:
    """Streaming recognition: real-time factor per chunk size, latency from a chunk to its partial text and from the
    end of speech to the final text, and CPU time per concurrent stream (how many streams one core keeps up with).

    Example: asr bench stream --model_uri models:/SpeechRecognitionModel@production --dataset
    data/LibriSpeech/test-clean
    """
    from asr.bench.stream import run
    from asr.tracking.store import check_model_source

    c = settings(BenchStreamConfig, options)
    check_model_source(c.model_uri)
    out = Path(c.out)
    run(c.model_uri, c.dataset, c.utterances, list(c.chunk_ms), c.streams, c.endpoint_ms, out,
        Path(c.json_out) if c.json_out else out.with_suffix(".stream.json"), say=click.echo)


@bench.command("lm")
@click_options(BenchLMConfig)
@friendly_errors
def bench_lm(**options) -> None:
    """Load time and memory of a large (default 800 MB) word 4-gram LM in the beam search decoder, and the time
    of a first and a second decode with it, on a synthetic ARPA LM of that size (written once, then reused)."""
    from asr.bench.lm import run

    c = settings(BenchLMConfig, options)
    run(c.size_mb, c.seed, c.work_dir, c.beam_size, Path(c.out), say=click.echo)


@bench.command("data")
@click_options(BenchDataConfig)
@friendly_errors
def bench_data(**options) -> None:
    """How the data path grows with the corpus: time to index and to featurize (1 and 2 processes), peak memory of
    a training process and its throughput from the feature store vs. from RAM, on prefixes of one synthetic corpus,
    with an extrapolation to 960 hours on 8 ranks."""
    from asr.bench.data import run

    c = settings(BenchDataConfig, options)
    if not c.hours or min(c.hours) <= 0:
        raise UserError(f"--hours {','.join(f'{h:g}' for h in c.hours)}: give positive sizes, e.g. 10,30,100")
    work_dir = c.work_dir or str(Path(tempfile.gettempdir()) / "asr-bench-data")
    run(list(c.hours), work_dir, c.seconds, c.seed, Path(c.out), say=click.echo)


if __name__ == "__main__":
    main()
