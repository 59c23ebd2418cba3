"""The feature store (issue 15): a split featurized once into memory-mapped shards reads back exactly the features
computed in memory; a featurization killed mid-way keeps its complete shards and shows no partial one; a second run
computes nothing; parts i/n featurized separately (as on several machines) make the store one run makes; and the
`asr data features` command refuses a bad --shard in one line before it reads any audio."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import asr_command, one_line_error, run_cli_here, subprocess_env

from asr.data import feature_store
from asr.data.dataset import SpeechDataset, read_split
from asr.data.feature_store import featurize, open_store, store_folder
from asr.features import FeatureExtractor

pytestmark = pytest.mark.slow  # real LibriSpeech audio, and CLI subprocesses

FEATURES = dict(sample_rate=16000, n_mfcc=13, n_mels=40, win_ms=25, hop_ms=10)


@pytest.fixture
def shards_of_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 utterances per shard: the 4 short dev utterances make 2 shards, the second one short."""
    monkeypatch.setenv("ASR_SHARD_UTTERANCES", "3")


def stored(utts: list, folder: Path) -> SpeechDataset:
    dataset = SpeechDataset(utts, FeatureExtractor(**FEATURES))
    dataset.use_store(open_store(folder, [u.file_id for u in utts]))
    return dataset


def test_the_store_reads_back_the_features_computed_in_memory(short_dev: Path, tmp_path: Path, shards_of_3):
    utts = read_split(short_dev)
    fe = FeatureExtractor(**FEATURES)
    folder = store_folder(tmp_path, fe, utts)
    rng = torch.get_rng_state()
    assert featurize(utts, fe, folder, workers=1) == feature_store.Featurized(written=2, skipped=0, unreadable=0)
    memory = SpeechDataset(utts, fe)
    lengths = memory.precompute()
    # a run draws the same dropout masks whether it featurized or found a complete store
    assert torch.equal(torch.get_rng_state(), rng)
    from_store = SpeechDataset(utts, fe)
    assert from_store.use_store(open_store(folder, [u.file_id for u in utts])) == lengths
    for i in range(len(utts)):
        assert from_store[i][0].shape == (13, lengths[i])
        assert torch.equal(from_store[i][0], memory[i][0]) and torch.equal(from_store[i][1], memory[i][1])
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00000.json", "shard-00000.npy", "shard-00001.json",
                                                        "shard-00001.npy"]
    # keyed by the feature settings: other MFCCs are another store, not a stale hit
    other = store_folder(tmp_path, FeatureExtractor(**{**FEATURES, "n_mfcc": 20}), utts)
    assert other != folder and other.parent != folder.parent


def test_a_featurization_killed_after_a_shard_keeps_it_and_shows_no_partial_one(short_dev: Path, tmp_path: Path,
                                                                                shards_of_3, monkeypatch):
    utts = read_split(short_dev)
    fe = FeatureExtractor(**FEATURES)
    folder = store_folder(tmp_path, fe, utts)
    save, saved = feature_store.np.save, []

    def dies_writing_shard_1(out, data) -> None:
        saved.append(data)
        if len(saved) == 2:
            out.write(b"\x93NUMPY half a shard")
            raise KeyboardInterrupt  # killed while writing shard 1
        save(out, data)

    monkeypatch.setattr(feature_store.np, "save", dies_writing_shard_1)
    with pytest.raises(KeyboardInterrupt):
        featurize(utts, fe, folder)
    monkeypatch.setattr(feature_store.np, "save", save)
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00000.json", "shard-00000.npy"]
    with pytest.raises(feature_store.StoreError, match=r"incomplete: 1 of 2 shards missing \(1\)"):
        open_store(folder, [u.file_id for u in utts])
    kept = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert featurize(utts, fe, folder) == feature_store.Featurized(written=1, skipped=1)
    assert all(folder.joinpath(name).stat().st_mtime_ns == t for name, t in kept.items())  # reused, not rewritten
    assert featurize(utts, fe, folder) == feature_store.Featurized(written=0, skipped=2)  # nothing left to do
    memory = SpeechDataset(utts, fe)
    memory.precompute()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(stored(utts, folder), memory, strict=True))


def features_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(asr_command() + ["data", "features", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=subprocess_env() | {"ASR_SHARD_UTTERANCES": "1"})


def test_parts_featurized_separately_make_the_store_one_run_makes(short_dev: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ASR_SHARD_UTTERANCES", "1")
    utts = read_split(short_dev)
    fe = FeatureExtractor(**FEATURES)
    whole = store_folder(tmp_path / "whole", fe, utts)
    featurize(utts, fe, whole)
    options = ["--train_data", str(short_dev), "--dev_data", "", "--test_data", "", "--feature_cache",
               str(tmp_path / "parts"), "--n_mels", "40"]
    for part in ("0/2", "1/2"):
        done = features_cli([*options, "--shard", part], tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == f"part {part}: 2 shards written, 0 skipped (already complete), " \
                                               "0 unreadable files"
    again = features_cli([*options, "--shard", "0/1"], tmp_path)
    assert again.stdout.splitlines()[-1] == "part 0/1: 0 shards written, 4 skipped (already complete), 0 unreadable " \
                                            "files"
    parts = store_folder(tmp_path / "parts", fe, utts)
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in whole.iterdir())
    for k in range(4):
        assert (parts / f"shard-{k:05d}.npy").read_bytes() == (whole / f"shard-{k:05d}.npy").read_bytes()
        written = json.loads((parts / f"shard-{k:05d}.json").read_text())
        one_run = json.loads((whole / f"shard-{k:05d}.json").read_text())
        assert (written["part"], one_run["part"]) == (f"{k % 2}/2", "0/1")  # which process wrote it
        assert {**written, "part": ""} == {**one_run, "part": ""}


@pytest.mark.parametrize("shard, why", [("3/2", "part 3 of 2: parts are numbered 0 to 1"),
                                        ("a/b", "expected PART/PARTS as two whole numbers"),
                                        ("0/0", "PARTS must be at least 1")])
def test_a_bad_shard_is_refused_in_one_line_before_any_audio_is_read(shard: str, why: str, tmp_path: Path):
    # the training folder does not exist: the --shard error comes first, before any folder is looked at
    args = ["--train_data", str(tmp_path / "nowhere"), "--shard", shard, "--feature_cache", str(tmp_path / "store")]
    # the first as a real `asr` process, the others in this one (seconds of start-up saved each)
    proc = features_cli(args, tmp_path) if shard == "3/2" else run_cli_here(["data", "features", *args], tmp_path)
    assert (problem := one_line_error(proc)) is None, problem
    assert f"--shard '{shard}': {why}" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_a_store_of_more_shards_than_the_open_file_limit_reads_every_utterance(tmp_path: Path, monkeypatch):
    """Each mapped shard holds a file descriptor: 960 hours are 550 shards, near the common soft limit of 1024."""
    import os
    import resource

    monkeypatch.setenv("ASR_SHARD_UTTERANCES", "1")
    shards = 200
    written = {f"1-1-{k:04d}": torch.full((13, 5 + k % 7), float(k), dtype=torch.float16) for k in range(shards)}
    for k, (file_id, feats) in enumerate(written.items()):
        feature_store.write_shard(tmp_path, k, [(file_id, feats)], "0/1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 50, hard))
    try:
        store = open_store(tmp_path, list(written))
        assert all(torch.equal(store[k], feats) for k, feats in enumerate(written.values()))
    finally:
        store = None
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_ranks_of_a_machine_share_its_featurizing_processes(monkeypatch: pytest.MonkeyPatch):
    """8 ranks on 8 cores start 1 process each, not 8 each (64 processes on 8 cores)."""
    import dataclasses
    import os

    from asr.settings import TrainConfig
    from asr.training.batches import prep_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    cfg = TrainConfig()
    assert [prep_workers(cfg, ranks) for ranks in (1, 2, 8, 16)] == [8, 4, 1, 1]
    in_process = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=0))
    assert prep_workers(in_process, 8) == 0
