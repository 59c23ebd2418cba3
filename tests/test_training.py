"""The training path: duration batching, skipping, the non-finite guard, accumulation, early stopping, and the
two promises of issue 3: a killed run resumes to the same weights as an uninterrupted one, and two data-parallel
processes reach the same weights as one process with the same global batches (issue 15: each rank featurizing a
disjoint half of the feature store).
Real LibriSpeech audio, real MLflow SQLite stores, real subprocesses and signals."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import (
    BIN,
    REPO,
    asr_command,
    free_port,
    make_tiny_config,
    new_store,
    one_line_error,
    only_run_dir,
    run_cli_here,
    subprocess_env,
    tiny_args,
    torch_threads,
)
from mlflow import MlflowClient

from asr import UserError
from asr import checkpoint as ckpt
from asr import precision_probe as pp
from asr.batching import plan_batches
from asr.config import cli_value, to_dict
from asr.data.dataset import SpeechDataset, read_split
from asr.features import FeatureExtractor
from asr.model import SpeechModel
from asr.settings import TrainConfig
from asr.text import VOCAB
from asr.training.batches import TrainData, ctc_min_frames
from asr.training.distributed import Context
from asr.training.loop import build_trainer, train_one_epoch
from asr.training.state import Progress
from asr.training.train import train

pytestmark = pytest.mark.slow  # real training runs, torchrun

# No randomness left but the data order: what data parallelism and accumulation must reproduce exactly.
EXACT = dict(dropout=0.0, freq_mask=0, time_mask=0, precision="fp32", threads=1)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def assert_same_training(a: Path, b: Path) -> None:
    """Same training, up to float summation order. Adam turns the ~1e-9 noise on a gradient that is nearly zero
    into a step of up to the learning rate on a handful of weights, so: almost every weight equal to 1e-6, and no
    weight off by more than a tenth of one step (a wrongly weighted batch moves thousands by a whole step)."""
    wa, wb = weights(a), weights(b)
    diffs = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert (diffs > 1e-6).float().mean() < 1e-3, f"{int((diffs > 1e-6).sum())} of {diffs.numel()} weights differ"
    assert diffs.max() < 3e-4, f"max weight difference {diffs.max():.2e}"


# ---------------------------------------------------------------- batching


def test_duration_batches_bound_padding_and_cover_every_item_once():
    rng = random.Random(0)
    lengths = [rng.randint(100, 3000) for _ in range(500)]
    items = list(range(0, 500, 2))  # only these may appear
    for seed in (None, 1, 2):
        batches = plan_batches(lengths, items, max_items=32, max_frames=20000, seed=seed)
        assert sorted(i for b in batches for i in b) == items
        for b in batches:
            assert len(b) <= 32
            assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 20000
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        assert padded < 1.15 * sum(lengths[i] for i in items)  # length buckets: little padding
    assert plan_batches(lengths, items, max_items=32, max_frames=20000, seed=1) != \
        plan_batches(lengths, items, max_items=32, max_frames=20000, seed=2)
    # unseeded = shortest first (SortaGrad)
    firsts = [lengths[b[0]] for b in plan_batches(lengths, items, max_items=8, max_frames=0, seed=None)]
    assert firsts == sorted(firsts)


def test_ctc_min_frames_counts_a_blank_between_repeats():
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([5, 5, 5]) == 5
    assert ctc_min_frames([]) == 0


# ---------------------------------------------------------------- in-process training behaviour


def test_long_and_ctc_infeasible_utterances_are_skipped_and_counted(tiny_config, short_dev: Path,
                                                                      isolated_mlflow: str, tmp_path: Path, capsys):
    # A limit between the shortest and the longest of the 4 utterances drops the longer ones; a time stride of 40
    # leaves 2.5 frames/s, too few for any spoken transcript (~15 characters/s)
    seconds = sorted(sf.info(str(u.path)).duration for u in read_split(short_dev))
    assert seconds[0] < seconds[-1]
    cfg = tiny_config(max_utterances=4, max_seconds=(seconds[0] + seconds[-1]) / 2, output_dir=str(tmp_path / "out"))
    train(cfg, progress=False)
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("SpeechRecognition").experiment_id])[0]
    too_long = run.data.metrics["skipped_too_long"]
    assert too_long >= 1 and run.data.params["train_utterances"] == str(4 - int(too_long))
    with pytest.raises(UserError, match="no usable training utterances"):
        train(tiny_config(max_utterances=4, time_stride=40, output_dir=str(tmp_path / "out2")), progress=False)


def test_a_nan_wav_in_the_training_set_is_skipped_and_counted(short_dev: Path, tmp_path: Path, isolated_mlflow: str):
    """A float WAV holding NaNs would poison its batch: it is left out as unreadable audio, training goes on."""
    split = tmp_path / "split"
    shutil.copytree(short_dev, split, symlinks=True)
    victim = read_split(split)[0]
    wave, rate = sf.read(str(victim.path), dtype="float32")
    wave[1000:1100] = np.nan
    victim.path.unlink()
    sf.write(str(victim.path.with_suffix(".wav")), wave, rate, subtype="FLOAT")
    cfg = make_tiny_config(split, max_utterances=4, batch=1, epoch=1, dev_data=str(short_dev),
                           output_dir=str(tmp_path / "out"))
    result = train(cfg, progress=False)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.metrics["skipped_unreadable"] == 1 and run.data.metrics["skipped_steps"] == 0
    state = torch.load(tmp_path / "out" / result.run_id / ckpt.LAST, weights_only=True)
    assert state["progress"]["step"] == 3
    assert all(torch.isfinite(w).all() for w in state["model"].values())


def test_non_finite_steps_are_skipped_and_counted(short_dev: Path):
    """A batch whose loss is not finite (here: features corrupted in memory after they were computed) is not
    applied: train_one_epoch skips that optimizer step, counts it, and the weights stay finite."""
    cfg = make_tiny_config(short_dev, max_utterances=4, batch=1, epoch=1)
    features = FeatureExtractor.from_config(cfg.features)
    dataset = SpeechDataset(read_split(short_dev), features)
    lengths = dataset.precompute()
    dataset._cache[0][:, :5] = float("nan")  # fault injection: one utterance's features
    torch.manual_seed(0)
    model = SpeechModel.from_config(cfg.recognizer(), len(VOCAB))
    trainer = build_trainer(cfg, Context(0, 1, torch.device("cpu")), model, None, total_steps=4)
    data = TrainData(features, dataset, dataset, lengths, lengths, list(range(len(dataset))), {}, 0)
    pos, losses = Progress(), []
    stats = train_one_epoch(trainer, data, pos, lambda loss, _: losses.append(loss) or False)
    assert stats.steps == pos.step == 4 and pos.skipped_steps == 1
    assert sum(not np.isfinite(v) for v in losses) == 1
    assert all(torch.isfinite(w).all() for w in model.state_dict().values()), to_dict(pos)


def test_gradient_accumulation_equals_the_bigger_batch(tiny_config, isolated_mlflow: str, tmp_path: Path):
    big = train(tiny_config(max_utterances=4, batch=2, output_dir=str(tmp_path / "big"), **EXACT), progress=False)
    acc = train(tiny_config(max_utterances=4, batch=1, accumulate=2, output_dir=str(tmp_path / "acc"), **EXACT),
                progress=False)
    assert_same_training(tmp_path / "big" / big.run_id / ckpt.LAST, tmp_path / "acc" / acc.run_id / ckpt.LAST)
    client = MlflowClient()
    losses = [[m.value for m in client.get_metric_history(r.run_id, "loss")] for r in (big, acc)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_early_stopping_keeps_the_best_epoch(tiny_config, isolated_mlflow: str, tmp_path: Path, capsys):
    """With a vanishing learning rate no epoch beats the first: patience 1 stops after epoch 2, best epoch 1, and
    says so in the singular."""
    result = train(tiny_config(max_utterances=2, epoch=5, patience=1, learning_rate=1e-12,
                               output_dir=str(tmp_path / "out")), progress=False)
    client = MlflowClient()
    assert len(client.get_metric_history(result.run_id, "wer")) == 2
    assert client.get_run(result.run_id).data.metrics["best_epoch"] == 1
    params = client.get_run(result.run_id).data.params
    assert (params["precision_used"], params["precision_probe"]) == ("fp32", "asked")
    assert "early stop: no better dev WER/CER for 1 epoch (best: epoch 1)" in capsys.readouterr().out


def test_precision_auto_takes_what_the_probe_measured_and_logs_why(tiny_config, isolated_mlflow: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, capsys):
    """The probe's cached times for this CPU and model decide: here bf16, twice as fast as fp32 in the cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tiny_config(precision="auto", threads=1, output_dir=str(tmp_path / "out"))
    with torch_threads(1):  # the threads the run's steps get, which the probe is keyed by
        key = pp.probe_key(cfg.recognizer(), True, min(pp.TRAINING_BATCH[0], cfg.optim.batch), pp.TRAINING_BATCH[1])
    pp.write_cache(pp.cache_file(), {key: {"fp32_ms": 40.0, "bf16_ms": 20.0, "training": True, "repeats": 5,
                                           "note": ""}})
    result = train(cfg, progress=False)
    params = MlflowClient().get_run(result.run_id).data.params
    why = "fp32 40.0 ms, bf16 20.0 ms per step (cached)"
    assert (params["precision_used"], params["precision_probe"]) == ("bf16", why)
    assert f"bf16 (auto: {why})" in capsys.readouterr().out


# ---------------------------------------------------------------- kill and resume


def test_sigterm_checkpoints_and_resume_reaches_the_uninterrupted_weights(short_dev: Path, tmp_path: Path,
                                                                           empty_store_db: Path):
    """Interrupt a real `asr train` process mid-run with SIGTERM to its process group (as `kill -TERM -PGID` or a
    terminal's Ctrl-C do), resume it, and compare the final weights with an uninterrupted run's. Dropout,
    SpecAugment and waveform augmentation in a loader worker process stay on: their randomness must be restored
    too."""
    base = dict(max_utterances=4, batch=1, epoch=3, rnn_dim=48, checkpoint_every=1, precision="fp32", threads=1,
                speed_perturb=0.1, gain_db=3.0, workers=1)
    uri = new_store(empty_store_db, tmp_path / "store")

    def cfg(name: str):
        return make_tiny_config(short_dev, output_dir=str(tmp_path / name), **base)

    whole = subprocess.run(asr_command() + ["train", *tiny_args(cfg("whole"))], cwd=tmp_path / "store",
                           env=subprocess_env(uri), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    parts = tmp_path / "parts"
    proc = subprocess.Popen(asr_command() + ["train", *tiny_args(cfg("parts"))], cwd=tmp_path / "store",
                            env=subprocess_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list(parts.glob(f"*/{ckpt.LAST}")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "training finished before the signal arrived"
    assert "Resume with: asr train --resume" in err, err
    run_dir = only_run_dir(parts)
    stopped = torch.load(run_dir / ckpt.LAST, weights_only=True)["progress"]
    assert 0 < stopped["step"] < 12
    client = MlflowClient(uri)
    assert client.get_run(run_dir.name).info.status == "KILLED"

    resumed = subprocess.run(asr_command() + ["train", "--resume", str(run_dir)], cwd=tmp_path / "store",
                             env=subprocess_env(uri), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run {run_dir.name}" in resumed.stdout
    assert client.get_run(run_dir.name).info.status == "FINISHED"
    assert len(client.get_metric_history(run_dir.name, "wer")) == 3  # every epoch once, across both processes
    diff = max_weight_diff(only_run_dir(tmp_path / "whole") / ckpt.LAST, run_dir / ckpt.LAST)
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run's by {diff}"

    again = run_cli_here(["train", "--resume", str(run_dir)], tmp_path / "store", uri)  # a refusal: in this process
    assert again.returncode == 1 and "already finished" in again.stderr


# ---------------------------------------------------------------- data parallel


def store_parts(root: Path) -> dict[int, str]:
    """Shard -> the part (i/n) that wrote it, of the one feature store under `root`."""
    return {meta["shard"]: meta["part"] for meta in (json.loads(p.read_text()) for p in root.glob("*/*/shard-*.json"))}


def test_two_gloo_ranks_featurize_disjoint_halves_and_match_one_process(short_dev: Path, tmp_path: Path,
                                                                        empty_store_db: Path):
    """Issue 15's two-rank proof: with a fresh feature store cut into one-utterance shards, rank 0 writes shards 0
    and 2 and rank 1 shards 1 and 3; trained from that store, the two ranks reach the weights of one process that
    keeps its features in memory, with the same global batches."""
    torchrun = BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this Python")
    base = dict(max_utterances=4, batch=4, epoch=2, **EXACT)
    uri = new_store(empty_store_db, tmp_path / "store")
    single = make_tiny_config(short_dev, output_dir=str(tmp_path / "single"), feature_cache="memory", **base)
    pair = make_tiny_config(short_dev, output_dir=str(tmp_path / "pair"), feature_cache=str(tmp_path / "features"),
                            **base)
    env = subprocess_env(uri) | {"ASR_SHARD_UTTERANCES": "1"}

    one = subprocess.run(asr_command() + ["train", *tiny_args(single)], cwd=tmp_path / "store",
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "asr", "train",
                          *tiny_args(pair)], cwd=tmp_path / "store", env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "cpu x 2" in two.stdout
    # the training and dev splits are the same 4 utterances: one store, each shard written once, by its rank
    assert store_parts(tmp_path / "features") == {0: "0/2", 1: "1/2", 2: "0/2", 3: "1/2"}
    single_dir, pair_dir = only_run_dir(tmp_path / "single"), only_run_dir(tmp_path / "pair")
    assert_same_training(single_dir / ckpt.LAST, pair_dir / ckpt.LAST)
    # only rank 0 logged: one run per training, each registered once; the loss is the global batch's
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("SpeechRecognition").experiment_id])
    assert len(runs) == 2
    losses = [[m.value for m in client.get_metric_history(d.name, "loss")] for d in (single_dir, pair_dir)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert len(client.search_model_versions("name='SpeechRecognitionModel'")) == 2


def test_two_machines_with_a_store_each_complete_their_own(short_dev: Path, tmp_path: Path, empty_store_db: Path):
    """Two machines (two torchrun nodes of one rank each), each with the default store root in its own cache
    folder: each rank writes its half where it is, then completes its own machine's store with the other half."""
    torchrun = BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this Python")
    uri = new_store(empty_store_db, tmp_path / "store")
    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "out"), max_utterances=4, batch=4, **EXACT)
    port = free_port()
    nodes = [subprocess.Popen([str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "asr", "train",
                               *tiny_args(cfg)], cwd=tmp_path / "store", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=subprocess_env(uri) | {"ASR_SHARD_UTTERANCES": "1",
                                                                    "XDG_CACHE_HOME": str(tmp_path / f"machine{node}")})
             for node in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    assert store_parts(tmp_path / "machine0" / "asr" / "features") == {0: "0/2", 1: "0/1", 2: "0/2", 3: "0/1"}
    assert store_parts(tmp_path / "machine1" / "asr" / "features") == {0: "0/1", 1: "1/2", 2: "0/1", 3: "1/2"}


# ---------------------------------------------------------------- resuming with new settings


def unregistered_run(short_dev: Path, out: Path) -> Path:
    """The run folder of a training that reached its end but could not register its model, as `--registered_model
    team/asr` left it before such names were refused up front (the name is set after the settings check, as an
    earlier version accepted it): last.pt at the end of the last epoch, nothing registered, the MLflow run FAILED."""
    from asr.tracking.store import TrackingError

    cfg = make_tiny_config(short_dev, output_dir=str(out), max_utterances=2, epoch=1)
    cfg.tracking.registered_model = "team/asr"
    with pytest.raises(TrackingError, match="Names cannot contain"):  # the registry's answer, in one line
        train(cfg, progress=False)
    run_dir = only_run_dir(out)
    state = torch.load(run_dir / ckpt.LAST, weights_only=True)
    assert state["progress"]["epoch"] == 1 and not state["progress"]["registered"]
    assert state["train_config"]["registered_model"] == "team/asr"
    return run_dir


def test_resume_with_a_new_registered_model_registers_the_trained_run_under_it(short_dev: Path, tmp_path: Path,
                                                                               isolated_mlflow: str):
    """Issue 13, kind 3: a run whose registration failed on its model name is registered under the name given with
    --resume, without training again; the new name is said, and kept in last.pt."""
    run_dir = unregistered_run(short_dev, tmp_path / "out")
    proc = subprocess.run(asr_command() + ["train", "--resume", str(run_dir), "--registered_model", "teamasr"],
                          cwd=tmp_path, env=subprocess_env(isolated_mlflow), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "taking registered_model team/asr -> teamasr" in proc.stdout, proc.stdout
    assert "teamasr version 1 promoted to Production" in proc.stdout, proc.stdout
    client = MlflowClient()
    (version,) = client.search_model_versions("name='teamasr'")
    assert version.run_id == run_dir.name
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED" and run.data.tags["registered_model"] == "teamasr"
    assert len(client.get_metric_history(run_dir.name, "wer")) == 1  # the one epoch, not trained again
    state = torch.load(run_dir / ckpt.LAST, weights_only=True)
    assert state["train_config"]["registered_model"] == "teamasr" and state["progress"]["registered"] == "1"


def test_resume_through_the_mlproject_command_takes_what_differs_from_the_defaults(short_dev: Path, tmp_path: Path,
                                                                                 isolated_mlflow: str):
    """`mlflow run -e train -P resume=DIR -P registered_model=NAME` passes every MLproject parameter, most at their
    defaults: those are not settings the user asked to change, so the run's own (tiny, non-default) settings stay and
    the new name is taken."""
    run_dir = unregistered_run(short_dev, tmp_path / "out")
    options = {**to_dict(TrainConfig()), "resume": str(run_dir), "registered_model": "teamasr"}
    args = [a for k, v in options.items() for a in (f"--{k}", str(cli_value(v)))]
    proc = subprocess.run([str(BIN / "python"), str(REPO / "main.py"), "--train", "True", *args], cwd=tmp_path,
                          env=subprocess_env(isolated_mlflow), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "taking registered_model team/asr -> teamasr" in proc.stdout, proc.stdout
    assert [v.run_id for v in MlflowClient().search_model_versions("name='teamasr'")] == [run_dir.name]


def test_resume_refuses_a_changed_training_setting_in_one_line(short_dev: Path, tmp_path: Path,
                                                               isolated_mlflow: str):
    """--epoch (or any setting the weights depend on) given with --resume and differing from the run's used to be
    dropped silently; it is refused naming it, before anything is read or written. A setting given with the run's
    own value (--batch here) is no change."""
    run_dir = unregistered_run(short_dev, tmp_path / "out")
    before = (run_dir / ckpt.LAST).read_bytes()
    proc = run_cli_here(["train", "--resume", str(run_dir), "--epoch", "3", "--batch", "2",  # in this process
                         "--registered_model", "teamasr"], tmp_path, isolated_mlflow)
    assert (problem := one_line_error(proc)) is None, problem
    assert "--epoch 3 (the run's: 1)" in proc.stderr and "--batch" not in proc.stderr, proc.stderr
    assert "only --registered_model, --promote, --offline_ok, --system_metrics, --feature_cache may change" \
        in proc.stderr
    assert proc.stdout == "" and (run_dir / ckpt.LAST).read_bytes() == before
    assert MlflowClient().search_model_versions("name='teamasr'") == []
