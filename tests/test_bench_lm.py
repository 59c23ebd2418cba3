"""`asr bench lm`: the synthetic 4-gram ARPA LM (a closed backoff model of the asked size, checked by test_lm's
independent reader, loaded by the real KenLM and decoded with by torchaudio's decoder) and the benchmark end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import asr_command, one_line_error, run_cli
from test_lm import load_arpa

from asr import UserError
from asr.bench.lm import spelled_emission, synthetic_lm
from asr.bench.synthetic_arpa import write_synthetic_arpa
from asr.config import DecodeConfig
from asr.decoding import make_decoder
from asr.lm import arpa_counts, arpa_words


def test_synthetic_arpa_is_a_closed_4gram_model_of_the_asked_size(tmp_path: Path):
    path = tmp_path / "lm.arpa"
    counts = write_synthetic_arpa(path, 1.0, seed=0)
    order, model = load_arpa(path)  # header counts, closed prefixes and suffixes, backoffs exactly on contexts
    assert order == 4 and len(model) == sum(counts)
    assert path.stat().st_size == pytest.approx(1e6, rel=0.03)
    assert arpa_counts(path) == dict(enumerate(counts, 1))
    assert counts[2] / counts[1] == pytest.approx(2.77, abs=0.02) and counts[3] / counts[1] == pytest.approx(4.13,
                                                                                                               abs=0.02)
    again, other = tmp_path / "again.arpa", tmp_path / "other.arpa"
    write_synthetic_arpa(again, 1.0, seed=0)
    write_synthetic_arpa(other, 1.0, seed=1)
    assert again.read_bytes() == path.read_bytes() and other.read_bytes() != path.read_bytes()


def test_the_real_decoder_loads_the_synthetic_lm_and_spells_its_words(tmp_path: Path):
    path = tmp_path / "lm.arpa"
    write_synthetic_arpa(path, 0.5, seed=3)
    emission, sentence = spelled_emission(arpa_words(path), seed=3)
    assert emission.shape == (333, 29) and len(sentence.split()) > 10
    decoder = make_decoder(DecodeConfig(decoder="beam", lm=str(path)))
    import torch

    assert decoder(emission[None], torch.tensor([len(emission)])) == [sentence]


def test_the_synthetic_lm_is_written_once_then_reused(tmp_path: Path):
    said: list[str] = []
    path, seconds = synthetic_lm(tmp_path / "work", 0.2, 0, said.append)
    assert path.is_file() and seconds is not None and said[0].startswith("writing a 0.2 MB")
    written = path.stat().st_mtime_ns
    again, seconds = synthetic_lm(tmp_path / "work", 0.2, 0, said.append)
    assert again == path and seconds is None and said[-1].startswith("reusing")
    assert path.stat().st_mtime_ns == written


def test_a_work_dir_that_cannot_hold_the_lm_is_a_user_error(tmp_path: Path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="--work_dir .*file/lm: cannot use it"):
        synthetic_lm(tmp_path / "file" / "lm", 0.2, 0, print)
    with pytest.raises(UserError, match="too little for a 1e.09 MB LM"):
        synthetic_lm(tmp_path, 1e9, 0, print)


@pytest.mark.slow  # the benchmark CLI end to end: two fresh processes that import torch
def test_bench_lm_prints_and_writes_load_memory_and_decode_numbers(tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- bench:train -->\nkept\n<!-- /bench:train -->\n")
    proc = run_cli(asr_command() + ["bench", "lm", "--size_mb", "2", "--work_dir", str(tmp_path / "work"),
                                    "--beam-size", "20", "--out", str(out)], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "kept" in text and text.count("<!-- bench:lm -->") == 1 and "ARPA only" in text
    line = next(line for line in text.splitlines() if line.startswith("| ARPA, 2 MB |"))
    assert line in proc.stdout.splitlines()  # the table is printed too
    row = line.split("|")[1:-1]
    (load_s, load_cpu), (build_s, build_cpu) = (map(float, row[i].replace("(", " ").strip(" )").split())
                                                for i in (2, 3))
    assert 0 < load_cpu and 0 < build_cpu and load_s > 0 and build_s > 0
    assert float(row[6]) > 0 and float(row[7]) > 0  # first and second decode
    assert float(row[8]) == 0.0  # the decoder with the LM spelled the utterance's words back
    counts = [int(c.replace(",", "")) for c in row[1].split("/")]
    assert len(counts) == 4 and counts[3] > counts[2] > counts[1] > counts[0]


@pytest.mark.slow  # the CLI in a subprocess
def test_bench_lm_with_a_bad_size_is_a_one_line_error(tmp_path: Path):
    proc = run_cli(asr_command() + ["bench", "lm", "--size_mb", "0", "--work_dir", str(tmp_path)], cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert "size_mb" in proc.stderr
