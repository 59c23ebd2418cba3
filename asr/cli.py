"""The `asr` command line: train, validate, serve, and build or fetch data."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
from click.core import ParameterSource

from asr import UserError
from asr.config import ServerConfig, TrainConfig, ValidateConfig, click_options, from_dict, load_settings


def friendly_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def run_train(cfg: TrainConfig) -> None:
    from asr.train import train

    train(cfg, progress=sys.stderr.isatty() or bool(os.environ.get("ASR_PROGRESS")))


def run_validate(cfg: ValidateConfig) -> None:
    from asr.validate import validate

    r = validate(cfg)
    click.echo(f"file id:   {r.utterance.file_id}  ({r.utterance.path})")
    click.echo(f"model:     {r.model_uri}")
    click.echo(f"target:    {r.target}")
    click.echo(f"predicted: {r.prediction}")
    click.echo(f"WER {r.wer:.3f}  CER {r.cer:.3f}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """Train, track, register, serve and validate DeepSpeech2-style speech recognition models with MLflow.

    Runs are tracked in $MLFLOW_TRACKING_URI (default sqlite:///mlflow.db with artifacts in ./mlruns).
    """


def with_settings_file(options: dict, config_file: str | None) -> TrainConfig:
    """Settings file values, overridden by the options actually given on the command line."""
    if not config_file:
        return from_dict(TrainConfig, options)
    ctx = click.get_current_context()
    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    return from_dict(TrainConfig, {**options, **load_settings(TrainConfig, config_file), **given})


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
    run_train(with_settings_file(options, config_file))


@main.command()
@click_options(ValidateConfig)
@friendly_errors
def validate(**options) -> None:
    """Transcribe one utterance by file id with a registered model and print predicted vs. target text.

    Example: asr validate --file_id 1089-134686-0000 --dataset data/LibriSpeech/test-clean
    """
    run_validate(from_dict(ValidateConfig, options))


@main.command()
@click_options(ServerConfig)
def server(**options) -> None:
    """Run the MLflow tracking server and UI in the foreground (Ctrl-C stops it).

    Open http://HOST:PORT and look under Models for the registered model.
    """
    cfg = from_dict(ServerConfig, options)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", cfg.backend_store_uri,
            "--artifacts-destination", cfg.artifacts_destination, "--host", cfg.host, "--port", str(cfg.port)]
    click.echo(f"MLflow UI on http://{cfg.host}:{cfg.port} (store {cfg.backend_store_uri}); Ctrl-C stops it")
    os.execv(sys.executable, argv)


@main.group()
def data() -> None:
    """Build the offline demo corpus or download LibriSpeech."""


@data.command()
@click.option("--root", type=click.Path(path_type=Path), default=Path("data/demo"), show_default=True,
              help="folder the corpus is written to (splits train, dev, test)")
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same corpus")
@click.option("--train-minutes", "--train_minutes", type=float, default=150.0, show_default=True,
              help="minutes of training audio")
@click.option("--dev-minutes", "--dev_minutes", type=float, default=4.0, show_default=True)
@click.option("--test-minutes", "--test_minutes", type=float, default=4.0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="synthesis processes")
@friendly_errors
def synth(root: Path, seed: int, train_minutes: float, dev_minutes: float, test_minutes: float,
          workers: int) -> None:
    """Synthesize the demo corpus (text-to-speech, LibriSpeech layout) so everything runs with no download."""
    from asr.synth import SynthConfig, synthesize_corpus

    summary = synthesize_corpus(SynthConfig(root, seed, train_minutes, dev_minutes, test_minutes, workers))
    for split in ("train", "dev", "test"):
        s = summary[split]
        click.echo(f"{root / split}: {s['utterances']} utterances, {s['minutes']:.1f} min, "
                   f"{len(s['voices'])} voices")


@data.command()
@click.option("--split", required=True, help="LibriSpeech split, e.g. test-clean or train-clean-100")
@click.option("--root", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="the split lands in ROOT/LibriSpeech/SPLIT")
@click.option("--mirror", default=None, help="base URL of another mirror of openslr resource 12")
@friendly_errors
def download(split: str, root: Path, mirror: str | None) -> None:
    """Download, verify (sha256) and extract a LibriSpeech split."""
    from asr.download import DEFAULT_MIRROR, download_split

    click.echo(f"ready: {download_split(split, root, mirror or DEFAULT_MIRROR)}")


@main.group()
def bench() -> None:
    """Benchmarks that print their numbers and write them to BENCHMARKS.md."""


@bench.command("train")
@click.option("--data", default="data/demo/train", show_default=True, help="split whose utterances are trained on")
@click.option("--utterances", type=int, default=200, show_default=True, help="how many of them (a fixed sample)")
@click.option("--seconds", type=float, default=60.0, show_default=True, help="timed training per measurement")
@click.option("--config", "configs", multiple=True, type=click.Choice(["default", "classic"]),
              default=("default", "classic"), show_default=True, help="model configs to measure")
@click.option("--out", type=click.Path(path_type=Path), default=Path("BENCHMARKS.md"), show_default=True)
@friendly_errors
def bench_train(data: str, utterances: int, seconds: float, configs: tuple[str, ...], out: Path) -> None:
    """Training throughput (audio-s/s) of the real training path vs. a naive one, FLOP/s against the machine's
    matmul peak, and peak memory, for the default and the classic (spine-seed, ~3.5 M) model configs."""
    from asr.bench import run

    run(data, utterances, seconds, list(configs), out, say=click.echo)


if __name__ == "__main__":
    main()
