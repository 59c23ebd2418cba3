"""`asr bench train` end to end on a few real utterances, and the BENCHMARKS.md section writer."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import asr_command, run_cli, split_dir

from asr.bench.report import write_section
from asr.data.dataset import read_split


def test_write_section_replaces_its_own_block_and_keeps_the_rest(tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    write_section(out, "train", "first")
    out.write_text(out.read_text() + "\nhand-written prose\n")
    write_section(out, "infer", "other")
    write_section(out, "train", "second")
    text = out.read_text()
    assert "second" in text and "first" not in text
    assert "hand-written prose" in text and "other" in text
    assert text.count("<!-- bench:train -->") == 1


@pytest.mark.slow  # the benchmark CLI end to end
def test_bench_train_measures_real_and_naive_paths(short_dev: Path, tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    proc = run_cli(asr_command() + ["bench", "train", "--data", str(short_dev), "--utterances", "4", "--seconds",
                                    "0.5", "--config", "default", "--out", str(out)], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| default |")]
    assert [r.split("|")[3].strip() for r in rows[:3]] == ["real", "naive, fused GRU", "naive"]
    speeds = [float(r.split("|")[8]) for r in rows[:3]]
    assert all(s > 0 for s in speeds)
    assert "**" in rows[0]  # the real path's ratio to the naive one


@pytest.mark.slow  # the benchmark CLI end to end
def test_bench_train_without_data_is_a_one_line_error(tmp_path: Path):
    proc = run_cli(asr_command() + ["bench", "train", "--data", str(tmp_path / "nope")], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error: benchmark data not found")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # the benchmark CLI end to end
def test_bench_infer_measures_every_decoder_and_precision(trained, short_dev: Path, tmp_path: Path):
    from asr.lm import build_arpa
    from asr.text import normalized

    lm = tmp_path / "lm.arpa"
    build_arpa([normalized(u.transcript) for u in read_split(split_dir("dev-clean"))], 2, lm)
    out = tmp_path / "BENCHMARKS.md"
    checkpoint = Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id / "model.pt"
    # the 4 shortest dev-clean utterances: the 10-second clip and a split to score, in each of the 6 processes
    proc = run_cli(asr_command() + ["bench", "infer", "--model-uri", str(checkpoint), "--data",
                                    str(short_dev), "--lm", str(lm), "--beam-size", "8",
                                    "--repeats", "2", "--out", str(out)], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "<!-- bench:infer -->" in text and "## Inference speed and decoders" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| greedy", "| beam"))]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("greedy", "fp32"), ("greedy", "bf16"), ("greedy", "int8"), ("beam", "fp32"), ("beam+LM", "fp32"),
        ("beam+LM", "int8")]
    rtf = [float(r[2]) for r in rows]
    throughput = [float(r[4]) for r in rows]
    assert all(0 < x < 1 for x in rtf) and all(x > 1 for x in throughput)  # faster than real time, every row
    assert rows[0][3].strip() == "1.0x"
