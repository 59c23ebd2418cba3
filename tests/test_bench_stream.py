"""`asr bench stream` end to end on one real utterance with the tiny trained model, and its real-time schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import asr_command, run_cli, short_split, split_dir

from asr import UserError
from asr.bench.stream import real_time_latencies, run
from asr.config import ConfigError, from_dict
from asr.settings import BenchStreamConfig


def test_chunks_arriving_in_real_time_queue_up_behind_a_slow_model():
    # 0.1 s chunks of 0.25 s of audio (the last one 0.05 s): fast enough, each waits only for its own compute
    latencies, final = real_time_latencies(0.1, 0.25, [0.01, 0.02, 0.01], finish=0.03)
    assert latencies == pytest.approx([0.01, 0.02, 0.01]) and final == pytest.approx(0.04)
    # 0.15 s of compute per 0.1 s chunk: each chunk waits for the one before, latency grows by 0.05 s a chunk
    latencies, final = real_time_latencies(0.1, 0.3, [0.15, 0.15, 0.15], finish=0.1)
    assert latencies == pytest.approx([0.15, 0.2, 0.25]) and final == pytest.approx(0.35)


@pytest.mark.slow  # a training run (shared), the benchmark CLI and its fresh process
def test_bench_stream_measures_every_chunk_size(trained, tmp_path: Path):
    out, numbers = tmp_path / "BENCHMARKS.md", tmp_path / "stream.json"
    shortest = short_split(tmp_path / "test-clean", split_dir("test-clean"), 1)
    checkpoint = Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id / "model.pt"
    proc = run_cli(asr_command() + ["bench", "stream", "--model_uri", str(checkpoint), "--dataset",
                                    str(shortest), "--utterances", "1", "--chunk_ms", "20,100,500",
                                    "--streams", "2", "--out", str(out), "--json_out", str(numbers)],
                   cwd=tmp_path, timeout=300, threads=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "<!-- bench:stream -->" in text and "## Streaming recognition" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "chunk" not in line]
    assert [r[0].strip() for r in rows] == ["20", "100", "500"]
    assert "| 500 |" in proc.stdout  # the table is printed too
    result = json.loads(numbers.read_text())
    assert result["streams"] == 2 and len(result["utterances"]) == 1 and result["audio_seconds"] > 1
    for row in result["rows"]:
        assert 0 < row["rtf"] and 0 < row["cpu_s_per_audio_s_per_stream"]
        assert row["streams_per_core"] == pytest.approx(1 / row["cpu_s_per_audio_s_per_stream"])
        assert 0 < row["partial_latency_ms_p50"] <= row["partial_latency_ms_p95"]
        assert 0 < row["final_latency_ms_p50"] <= row["final_latency_ms_p95"]
        assert row["words"] > 0
    assert [row["chunks"] for row in result["rows"]][0] > [row["chunks"] for row in result["rows"]][-1]
    assert f"{result['rows'][0]['rtf']:.4f}" in text


def test_chunk_sizes_are_positive():
    with pytest.raises(ConfigError, match="--chunk_ms 0,100: give positive sizes"):
        from_dict(BenchStreamConfig, {"model_uri": "model.pt", "chunk_ms": "0,100"})


def test_bench_stream_without_data_says_so_before_loading_anything(tmp_path: Path):
    with pytest.raises(UserError, match="benchmark data not found: .*nope"):
        run("model.pt", str(tmp_path / "nope"), 1, [100.0], 1, 800.0, tmp_path / "B.md", tmp_path / "B.json")
    assert not (tmp_path / "B.md").exists()
