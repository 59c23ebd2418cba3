"""`asr bench data`: one synthetic corpus, prefixes of it as split folders of their own, and the benchmark end to
end (index, featurize, training from the store and from memory, the section it writes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import asr_command, one_line_error, run_cli

from asr.bench.data import REPEAT_SPEAKER_STEP, corpus, extrapolation, prefix_split
from asr.data.dataset import read_corpus, read_split


def test_prefixes_are_nested_split_folders_of_the_asked_hours(tmp_path: Path):
    train = corpus(tmp_path, 0.01, 0, lambda _: None)
    full = sorted(read_split(train), key=lambda u: u.file_id)
    small, small_h = prefix_split(train, 0.004, tmp_path / "p1" / "train")
    large, large_h = prefix_split(train, 0.008, tmp_path / "p2" / "train")
    a, b = (sorted(read_corpus([s]).utterances, key=lambda u: u.file_id) for s in (small, large))
    assert 0.004 <= small_h < large_h and 0.008 <= large_h
    assert 0 < len(a) < len(b) < len(full) and [u.file_id for u in b[:len(a)]] == [u.file_id for u in a]
    assert [(u.file_id, u.transcript) for u in b] == [(u.file_id, u.transcript) for u in full[:len(b)]]
    assert all(u.path.resolve().parent.parent.parent == train for u in b)  # links to the corpus's audio
    longer, longer_h = prefix_split(train, 0.025, tmp_path / "p3" / "train")  # past the end: the corpus again
    c = sorted(read_corpus([longer]).utterances, key=lambda u: (len(u.file_id), u.file_id))
    assert longer_h >= 0.025 and len(c) > 2 * len(full) and len({u.file_id for u in c}) == len(c)
    again = {u.file_id: u for u in c}
    for u in full:  # pass 1: same audio and transcript, speaker id + REPEAT_SPEAKER_STEP
        speaker, rest = u.file_id.split("-", 1)
        twin = again[f"{int(speaker) + REPEAT_SPEAKER_STEP}-{rest}"]
        assert twin.path.resolve() == u.path.resolve() and twin.transcript == u.transcript


def test_extrapolation_is_flat_per_rank_within_ten_percent_and_linear_beyond():
    def row(hours: float, peak: float) -> dict:
        return {"hours": hours, "featurize_1p_s": 60 * hours, "featurize_2p_s": 30 * hours,
                "store_bytes": 9.4e6 * hours, "store": {"peak_mb": peak}}

    flat = "\n".join(extrapolation([row(10, 1000), row(100, 1050)]))
    assert "the largest peak, 1050 MB per rank at 960 h, x 8 ranks = 8.2 GB" in flat
    assert "960 h x 60 s/h / 8 processes = 120 min" in flat and "9.4 MB/h x 960 h = 9.0 GB" in flat
    growing = "\n".join(extrapolation([row(10, 1000), row(100, 1900)]))
    assert "1900 + 10.0 x (960 - 100.00) = 10500 MB" in growing
    noisy = "\n".join(extrapolation([row(10, 1200), row(30, 930), row(100, 1000)]))  # never a negative slope
    assert "1000 + 0.0 x (960 - 100.00) = 1000 MB" in noisy


@pytest.mark.slow  # the benchmark CLI end to end: a dozen fresh processes that import torch (minutes here)
def test_bench_data_prints_and_writes_its_section_with_positive_times_and_memory(tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- bench:train -->\nkept\n<!-- /bench:train -->\n")
    proc = run_cli(asr_command() + ["bench", "data", "--hours", "0.01,0.02", "--seconds", "1", "--work_dir",
                                    str(tmp_path / "work"), "--out", str(out)], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "kept" in text and text.count("<!-- bench:data -->") == 1 and "Extrapolation to 960 h on 8 ranks" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.0")]
    assert len(rows) == 2 and all(r in proc.stdout.splitlines() for r in rows)  # the table is printed too
    for r in rows:
        cells = [float(c) for c in r.strip("|").split("|")]
        assert len(cells) == 12 and all(c > 0 for c in cells[2:]), r  # times, MB, audio-s/s, RSS: from memory too
    assert float(rows[0].split("|")[2]) < float(rows[1].split("|")[2])  # more utterances in the larger prefix


@pytest.mark.slow  # the CLI in a subprocess
def test_bench_data_with_a_bad_size_is_a_one_line_error(tmp_path: Path):
    proc = run_cli(asr_command() + ["bench", "data", "--hours", "0,1", "--work_dir", str(tmp_path)], cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert "--hours 0,1" in proc.stderr
