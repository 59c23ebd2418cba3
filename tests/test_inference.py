"""Inference on real audio with a real registered model: long recordings cut at quiet points, `asr transcribe`
on any rate/channel layout, `asr evaluate` and `asr lm build/tune` logging to a real MLflow store.
The model is the shared tiny one (seconds of training): these tests check the plumbing, and compare the model's
outputs across input paths, not its accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import MODEL_NAME, asr_command, one_line_error, run_cli, run_cli_here, split_dir
from mlflow import MlflowClient

from asr.audio import load_audio, pieces, quiet_cut_points
from asr.config import DecodeConfig
from asr.data.dataset import read_split, split_digest
from asr.metrics import cer, wer
from asr.text import normalized
from asr.transcribe import Transcriber

pytestmark = pytest.mark.slow  # trained models, CLI subprocesses, real LibriSpeech

RATE = 16000


def test_cuts_fall_in_the_pauses_and_pieces_cover_the_audio():
    g = torch.Generator().manual_seed(0)
    bursts, pause = [6.0, 7.5, 3.0, 9.0, 4.0, 8.0], int(0.4 * RATE)
    wave, gaps, pos = [], [], 0
    for seconds in bursts:
        n = int(seconds * RATE)
        wave += [0.3 * torch.randn(n, generator=g), 1e-4 * torch.randn(pause, generator=g)]
        pos += n
        gaps.append((pos, pos + pause))
        pos += pause
    wave = torch.cat(wave)
    cuts = quiet_cut_points(wave, RATE, max_seconds=10.0)
    assert cuts, "a 41 s recording must be cut for 10 s pieces"
    assert all(any(a <= c <= b for a, b in gaps) for c in cuts), (cuts, gaps)
    parts = pieces(wave, RATE, 10.0)
    assert all(p.numel() <= 10 * RATE for p in parts)
    assert torch.equal(torch.cat(parts), wave)
    assert quiet_cut_points(wave[: 5 * RATE], RATE, 10.0) == []
    assert len(pieces(wave, RATE, 0)) == 1  # 0 = never cut


def test_a_last_sliver_joins_its_neighbour():
    wave = torch.ones(int(10.1 * RATE))
    parts = pieces(wave, RATE, 10.0)
    assert len(parts) == 1 or min(p.numel() for p in parts) >= RATE // 4


@pytest.fixture
def transcriber(trained) -> Transcriber:
    return Transcriber.from_checkpoint(Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id / "model.pt")


def test_long_audio_is_transcribed_piecewise_like_its_parts(transcriber):
    """Three utterances with pauses between them are cut at those pauses; each piece is transcribed as if it
    were a file of its own, and the texts come back joined, in order, even when the pieces of several
    recordings share model batches (sorted by length)."""
    waves = sorted((load_audio(u.path) for u in read_split(split_dir("test-clean"))), key=len)[-3:][::-1]
    pause = torch.zeros(int(0.5 * RATE))
    joined = torch.cat([waves[0], pause, waves[1], pause, waves[2]])
    transcriber.configure(DecodeConfig(chunk_seconds=max(w.numel() for w in waves) / RATE + 0.6))
    parts = pieces(joined, RATE, transcriber.decode_cfg.chunk_seconds)
    assert len(parts) == 3
    assert [p.numel() for p in parts] == pytest.approx([w.numel() for w in waves], abs=0.55 * RATE)
    texts = transcriber.transcribe([joined, waves[2], joined.flip(0)])
    one_by_one = [transcriber.transcribe([p])[0] for p in parts]
    assert texts[0] == " ".join(t for t in one_by_one if t)
    assert texts[1] == transcriber.transcribe([waves[2]])[0]
    emissions = transcriber.emissions([joined, waves[2]])
    assert [len(e) for e in emissions] == [3, 1]


def test_transcribe_cli_reads_flac_and_44k_stereo_wav(trained_store, tmp_path):
    trained = trained_store
    source = split_dir("test-clean") / "1089/134686/1089-134686-0000.flac"
    mono, rate = sf.read(source, dtype="float32")
    import torchaudio.functional as AF

    at_44k = AF.resample(torch.from_numpy(mono), rate, 44100).numpy()
    stereo = tmp_path / "stereo-44k.wav"
    sf.write(stereo, np.stack([at_44k, 0.5 * at_44k], axis=1), 44100, subtype="PCM_16")
    proc = run_cli(asr_command() + ["transcribe", "--json", str(source), str(stereo)], cwd=trained.root,
                   tracking_uri=trained.uri)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(source), str(stereo)]
    assert lines[0]["seconds"] == pytest.approx(len(mono) / rate, abs=1e-3)
    assert lines[1]["seconds"] == pytest.approx(len(mono) / rate, abs=1e-3)

    # the model sees (nearly) the same thing either way: 44.1 kHz stereo is mixed down and resampled
    t = Transcriber.from_checkpoint(Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id / "model.pt")
    a, b = t.emissions([load_audio(source), load_audio(stereo)])
    assert a[0].shape == b[0].shape and (a[0] - b[0]).abs().max() < 0.5
    # and the command prints what the model says (run in this process: this tiny model's outputs are near-ties
    # that another process's float summation order can flip)
    from click.testing import CliRunner

    from asr.cli import main

    result = CliRunner().invoke(main, ["transcribe", "--model-uri", trained.result.run_id, str(source),
                                       str(stereo)], env={"MLFLOW_TRACKING_URI": trained.uri})
    assert result.exit_code == 0, result.output
    expected = [t.transcribe([load_audio(p)])[0] for p in (source, stereo)]
    assert result.stdout.splitlines() == [f"{source}\t{expected[0]}", f"{stereo}\t{expected[1]}"]


def test_transcribe_errors_are_one_line(trained, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    cases = {
        "unreadable": (["transcribe", str(junk)], "cannot read audio"),
        "missing model": (["transcribe", "--model-uri", "models:/NoSuchModel@production", str(junk)], "NoSuchModel"),
        "bad uri": (["transcribe", "--model-uri", "not-a-model", str(junk)], "not a checkpoint"),
        "missing lm": (["transcribe", "--lm", str(tmp_path / "x.arpa"), str(junk)], "no such file"),
    }

    # the first as a real `asr` process (exit status, stderr as a user sees them), the others in this process
    first, *others = cases
    results = {first: run_cli(asr_command() + cases[first][0], cwd=trained.root, tracking_uri=trained.uri)}
    results |= {name: run_cli_here(cases[name][0], cwd=trained.root, tracking_uri=trained.uri) for name in others}
    failures = []
    for name, proc in results.items():
        expected = cases[name][1]
        if problem := one_line_error(proc):
            failures.append(f"{name}: {problem}")
        elif expected not in proc.stderr:
            failures.append(f"{name}: {proc.stderr!r} lacks {expected!r}")
    assert not failures, "\n".join(failures)


def test_evaluate_scores_a_split_and_logs_the_worst_utterances(trained_store, tmp_path):
    from asr.evaluation.evaluate import evaluate
    from asr.settings import EvaluateConfig

    test_clean = str(split_dir("test-clean"))
    scores = evaluate(EvaluateConfig(dataset=test_clean, worst=3, batch_seconds=30), progress=False)
    utts = read_split(test_clean)
    assert scores.utterances == len(utts)
    refs = {r["file_id"]: r["target"] for r in scores.rows}
    hyps = {r["file_id"]: r["predicted"] for r in scores.rows}
    assert refs == {u.file_id: normalized(u.transcript) for u in utts}
    ids = sorted(refs)
    assert scores.wer == pytest.approx(wer([refs[i] for i in ids], [hyps[i] for i in ids]))
    assert scores.cer == pytest.approx(cer([refs[i] for i in ids], [hyps[i] for i in ids]))
    assert [r["errors"] for r in scores.rows] == sorted((r["errors"] for r in scores.rows), reverse=True)
    # batching and padding change nothing: an utterance's model outputs alone and in a padded batch agree
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@production").unwrap_python_model().transcriber
    waves = [load_audio(u.path) for u in utts]
    alone = model.emissions(waves[:1])[0][0]
    batched = model.emissions(waves)[0][0]
    assert alone.shape == batched.shape and (alone - batched).abs().max() < 1e-4

    client = MlflowClient()
    run = client.search_runs([mlflow.get_experiment_by_name("SpeechRecognition").experiment_id],
                             "tags.task = 'evaluate'", order_by=["start_time DESC"])[0]
    assert run.data.metrics["wer"] == pytest.approx(scores.wer)
    assert run.data.metrics["cer"] == pytest.approx(scores.cer)
    assert run.data.params["dataset"] == test_clean and run.data.params["decoder"] == "greedy"
    # which version the alias pointed to, and the split scored, stay on the run after the alias moves on
    assert run.data.params["model_uri"] == f"models:/{MODEL_NAME}@production"
    scored_version = client.get_model_version_by_alias(MODEL_NAME, "production")  # other tests may promote others
    assert {k: run.data.tags.get(k) for k in ("registered_model", "model_version", "model_run_id")} == {
        "registered_model": MODEL_NAME, "model_version": str(scored_version.version),
        "model_run_id": scored_version.run_id}
    (scored,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in scored.tags} == {"mlflow.data.context": "evaluation"}
    assert scored.dataset.digest == split_digest(utts) and scored.dataset.name == "LibriSpeech/test-clean"
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                artifact_path="worst_errors.json",
                                                                dst_path=str(tmp_path))).read_text())
    assert len(table["data"]) == 3
    assert [row[0] for row in table["data"]] == [r["file_id"] for r in scores.rows[:3]]


def test_lm_build_and_tune_cli(trained, tmp_path):
    dev = str(split_dir("dev-clean"))
    arpa, lexicon = tmp_path / "lm.arpa", tmp_path / "lexicon.txt"
    proc = run_cli(asr_command() + ["lm", "build", "--from-dataset", dev, "--order", "2", "--out", str(arpa),
                                    "--lexicon", str(lexicon)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    words = {w for u in read_split(dev) for w in normalized(u.transcript).split()}
    assert f"{len(words)} words" in proc.stdout
    assert {line.split("\t")[0] for line in lexicon.read_text().splitlines()} == words

    proc = run_cli_here(["lm", "tune", "--lm", str(arpa), "--dataset", dev, "--lm_weights", "0,1",  # in this process
                         "--word_scores", "0,2", "--beam_size", "8", "--max_utterances", "4"],
                        cwd=trained.root, tracking_uri=trained.uri)
    assert proc.returncode == 0, proc.stderr
    grid = [line for line in proc.stdout.splitlines() if line.startswith("lm_weight")]
    assert len(grid) == 4
    assert proc.stdout.splitlines()[-1].startswith("best: --lm_weight ")
    client = MlflowClient(trained.uri)
    runs = client.search_runs([client.get_experiment_by_name("SpeechRecognition").experiment_id],
                              "tags.task = 'lm-tune'")
    assert len(runs) == 1 and {"best_wer", "best_lm_weight", "best_word_score"} <= set(runs[0].data.metrics)
    production = str(client.get_model_version_by_alias(MODEL_NAME, "production").version)  # others may be promoted
    assert (runs[0].data.tags["registered_model"], runs[0].data.tags["model_version"]) == (MODEL_NAME, production)

    bad = run_cli_here(["lm", "build", "--text", str(tmp_path / "none.txt")], cwd=tmp_path)
    assert one_line_error(bad) is None and "no such file" in bad.stderr


def test_ten_minute_file_in_bounded_memory(trained, tmp_path):
    """Peak memory of transcribing 10 minutes of audio stays near that of 1 minute, because the model only
    ever sees `chunk_seconds` pieces (without cutting, the 10-minute STFT alone is hundreds of MB)."""
    utts = read_split(split_dir("test-clean"))
    speech = np.concatenate([sf.read(u.path, dtype="float32")[0] for u in utts])
    speech = np.tile(speech, 600 * RATE // len(speech) + 1)
    pause = np.zeros(RATE // 2, dtype=np.float32)
    blocks = [np.concatenate([speech[i:i + 8 * RATE], pause]) for i in range(0, len(speech), 8 * RATE)]
    long_audio = np.concatenate(blocks)
    assert len(long_audio) >= 600 * RATE
    ten, one = tmp_path / "ten.flac", tmp_path / "one.flac"
    sf.write(ten, long_audio[: 600 * RATE], RATE)
    sf.write(one, long_audio[: 60 * RATE], RATE)
    checkpoint = Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id / "model.pt"
    script = ("import resource, sys; from asr.transcribe import Transcriber; from asr.audio import load_audio;"
              "t = Transcriber.from_checkpoint(sys.argv[1]); t.transcribe([load_audio(sys.argv[2])]);"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    peak = {}
    for name, path in (("one", one), ("ten", ten)):
        proc = subprocess.run([sys.executable, "-c", script, str(checkpoint), str(path)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        peak[name] = int(proc.stdout.split()[-1])
    # the 10-minute waveform itself is ~40 MB at 16 kHz (plus its float copy while loading)
    assert peak["ten"] - peak["one"] < 150, peak
