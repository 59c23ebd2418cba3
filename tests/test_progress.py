"""Progress where output is not a terminal (a CI log, `mlflow run` output, a pipe): no carriage-return bars, whose
every redraw a log keeps, but a plain line every 10% when progress is asked for ($ASR_PROGRESS), and nothing
otherwise; bars stay on a terminal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import asr_command, make_tiny_config, run_cli_here, subprocess_env, tiny_args

from asr.data.progress import Lines, progress_bar


def test_off_a_terminal_a_bar_is_a_plain_line_every_ten_percent(capsys):
    assert isinstance(progress_bar(total=3, enabled=True), Lines)  # capsys: stderr is no terminal
    with Lines(total=50, desc="features train", unit="utt", min_seconds=0) as bar:
        for _ in range(50):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"features train: {n}/50 utt ({2 * n}%)"
                                                      for n in range(5, 51, 5)]
    assert all(line.endswith("00:00") for line in lines) and "\r" not in "".join(lines)


def test_plain_lines_are_rate_limited_and_a_step_without_leave_prints_no_last_line(capsys):
    bar = Lines(total=4, desc="epoch 1/2", unit="batch", leave=False, min_seconds=0)
    bar.update()
    bar.set_postfix(loss="2.345")
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == "epoch 1/2: 1/4 batch (25%), 00:00\n"  # the epoch's own line says the rest
    for _ in Lines(range(100), desc="grid"):  # the default pace: nothing before MIN_SECONDS, then the last line
        pass
    assert capsys.readouterr().err == "grid: 100/100 it (100%), 00:00\n"
    download = Lines(total=4 << 20, desc="dev-clean.tar.gz", unit="B", unit_scale=True, initial=1 << 20,
                     min_seconds=0)  # resumed a quarter in
    download.update(2 << 20)
    assert capsys.readouterr().err == "dev-clean.tar.gz: 3.00MB/4.00MB (75%), 00:00\n"


def test_large_counts_are_written_out_not_in_scientific_notation():
    bar = Lines(total=2_800_000, desc="featurize", unit="utt", initial=1_234_567)
    assert bar.line(bar.started).startswith("featurize: 1,234,567/2,800,000 utt (44%), ")


def test_disabled_progress_prints_nothing(capsys):
    for _ in progress_bar(range(10), desc="grid", enabled=False):
        pass
    with progress_bar(total=10, desc="features", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_evaluate_with_asr_progress_off_a_terminal_says_plain_lines(short_dev: Path, tmp_path: Path,
                                                                   isolated_mlflow: str):
    """`ASR_PROGRESS=1 asr evaluate ... 2> log`: the log gets its progress as lines, not redrawn bars."""
    from asr.checkpoint import save_checkpoint
    from asr.model import SpeechModel
    from asr.vocabulary import ENGLISH

    cfg = make_tiny_config(short_dev).recognizer()
    model = save_checkpoint(tmp_path / "model.pt", cfg, SpeechModel.from_config(cfg, len(ENGLISH)))
    proc = run_cli_here(["evaluate", "--model_uri", str(model), "--dataset", str(short_dev)], tmp_path,
                        isolated_mlflow, {"ASR_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr + proc.stdout
    assert "evaluate: 4/4 utt (100%), " in proc.stderr and "over 4 utterances" in proc.stdout


def test_data_synth_off_a_terminal_draws_no_bar(tmp_path: Path):
    """`asr data synth` drew its bar whatever its output was (a CI log kept every redraw); it now decides as the
    other commands do: off a terminal and without $ASR_PROGRESS, no progress at all."""
    proc = run_cli_here(["data", "synth", "--root", str(tmp_path / "demo"), "--train_minutes", "0.05",
                         "--dev_minutes", "0.05", "--test_minutes", "0.05", "--workers", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "utterances" in proc.stdout


def test_mlflow_artifact_bars_are_off_off_a_terminal_unless_asked_for(monkeypatch, capsys):
    from asr.cli import quiet_mlflow_bars

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    quiet_mlflow_bars()  # capsys: stderr is no terminal
    import os

    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    quiet_mlflow_bars()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


@pytest.mark.slow  # a training in a subprocess
def test_a_training_logged_to_a_file_holds_no_redrawn_bars(short_dev: Path, tmp_path: Path, isolated_mlflow: str):
    """`ASR_PROGRESS=1 asr train ... > log 2>&1`, as a CI job or `mlflow run` writes it: featurizing, the epoch and
    MLflow's own artifact transfers leave no carriage return in the log, and the run still says what it did."""
    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "out"), feature_cache="memory")
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.run([*asr_command(), "train", *tiny_args(cfg)], cwd=tmp_path, stdout=out,
                              stderr=subprocess.STDOUT, env=subprocess_env(isolated_mlflow) | {"ASR_PROGRESS": "1"},
                              timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text, text
    assert "epoch 1/1: val_loss" in text and "version 1 promoted to Production" in text
