"""Faults (issue "Faults"): kill -9 at any moment, two trainings sharing one SQLite store, concurrent promotions,
and a disk that fills up while a checkpoint is written. Real `asr train` processes, real signals, a real MLflow
SQLite store, real OS-level write failures (a tiny tmpfs, or RLIMIT_FSIZE); nothing is mocked."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import (
    MODEL_NAME,
    asr_command,
    make_tiny_config,
    new_store,
    one_line_error,
    only_run_dir,
    subprocess_env,
    tiny_args,
)
from mlflow import MlflowClient

from asr import checkpoint as ckpt
from asr.tracking import registry
from asr.tracking.store import TrackingError, create_experiment

pytestmark = pytest.mark.slow  # real training processes killed and resumed, full disks

# 4 utterances, batch 1: 4 optimizer steps an epoch, a checkpoint after each. Dropout and SpecAugment stay on (the
# defaults): their random draws must be restored exactly on resume too. One thread: the same float summation order
# in every process.
BASE = dict(max_utterances=4, batch=1, checkpoint_every=1, precision="fp32", threads=1)
DEV = "d1d1d1d1d1d1d1d1"  # the dev_digest of the versions the registry tests register: all scored on one dev set


class Training:
    """One `asr train` process in its own process group (so a kill takes its loader workers too), output to files
    (a pipe nobody reads would stall it)."""

    def __init__(self, args: list[str], cwd: Path, uri: str, log: Path, preexec: Callable | None = None,
                 kill_at: str = "") -> None:
        """kill_at: a fault-injection point (asr.training.state.kill_point) where the process waits to be killed;
        `waiting()` says when it is there."""
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        self.wait_file = log.with_suffix(".waiting")
        env = subprocess_env(uri) | ({"ASR_KILL_AT": kill_at, "ASR_KILL_WAIT": str(self.wait_file)} if kill_at
                                     else {})
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(asr_command() + ["train", *args], cwd=cwd, env=env,
                                         stdout=out, stderr=err, start_new_session=True, preexec_fn=preexec)

    def waiting(self) -> bool:
        return self.wait_file.exists()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while not condition():
            if self.proc.poll() is not None:  # it may have exited (or killed itself) just after the condition held
                assert condition(), f"exited {self.proc.returncode} first:\n{self.stderr()[-3000:]}"
                return
            assert time.time() < deadline, "timed out"
            time.sleep(0.005)


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["progress"]["step"]


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = (torch.load(p, map_location="cpu", weights_only=True)["model"] for p in (a, b))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def assert_one_production(client: MlflowClient, name: str = MODEL_NAME) -> str:
    """Exactly one version in stage Production, and the production alias on that same version."""
    staged = [str(v.version) for v in client.search_model_versions(f"name='{name}'")
              if v.current_stage == registry.PRODUCTION_STAGE]
    alias = str(client.get_registered_model(name).aliases.get(registry.PRODUCTION_ALIAS))
    assert staged == [alias], f"stage Production on {staged}, alias production on {alias}"
    return alias


# ---------------------------------------------------------------- kill -9, five times


def test_kill_9_five_times_then_resume_reaches_the_uninterrupted_weights(short_dev: Path, tmp_path: Path,
                                                                          empty_store_db: Path):
    """SIGKILL a real training at five moments (early, middle and late in training, while finishing before the
    registration, and right after it), resuming it each time. A kill loses the steps since the last checkpoint;
    the resume recomputes them from the saved RNG states, so the result is still the uninterrupted run's.

    Each moment is a fault-injection point where the process waits (ASR_KILL_AT, ASR_KILL_WAIT) until the test's
    kill -9 of its process group lands: nothing is timed, so a busy machine cannot make a kill land elsewhere.
    Four epochs of 4 steps: each of the three kills in training lands in a different epoch."""
    epochs = 4
    uri = new_store(empty_store_db, tmp_path / "store")
    client = MlflowClient(uri)

    def args(name: str) -> list[str]:
        return tiny_args(make_tiny_config(short_dev, output_dir=str(tmp_path / name), epoch=epochs, **BASE))

    # (moment, kill point, the step last.pt must hold after the kill): a step's point comes after the step and
    # before its checkpoint, so that kill loses the step
    moments = [
        ("early", "step 2", 1),
        ("middle", f"step {epochs * 4 // 2}", epochs * 4 // 2 - 1),
        ("late", f"step {epochs * 4 - 3}", epochs * 4 - 4),
        ("finishing, model.pt written and logged, not yet registered", "logged", epochs * 4),
        ("just registered", "registered", epochs * 4),
    ]
    whole = Training(args("whole"), tmp_path / "store", uri, tmp_path / "whole")  # alongside: 2 cores
    parts = tmp_path / "parts"
    run = Training(args("parts"), tmp_path / "store", uri, tmp_path / "part0", kill_at=moments[0][1])
    run_dir: Path | None = None
    steps: list[int] = []
    for i, (moment, point, step) in enumerate(moments):
        run.wait_until(run.waiting, timeout=900)  # a deadline, not a timing: the process waits there for the kill
        run.kill()
        assert run.proc.returncode == -signal.SIGKILL, f"{moment}: finished before the kill"
        run_dir = run_dir or only_run_dir(parts)
        last = run_dir / ckpt.LAST
        state = ckpt.load_training_state(last)  # weights_only; raises on a half-written or finished file
        steps.append(state["progress"]["step"])
        assert steps[-1] == step, f"{moment}: last.pt at step {steps[-1]}, not {step}"
        assert state["run_id"] == run_dir.name
        assert client.get_run(run_dir.name).info.status == "RUNNING"  # nothing could mark it after a SIGKILL
        registered = client.search_model_versions(f"name='{MODEL_NAME}' and run_id='{run_dir.name}'")
        assert len(registered) == (i == len(moments) - 1), f"{moment}: {len(registered)} versions registered"
        assert ckpt.find_resumable("latest", str(parts)) == last
        if i == 1:  # what a kill in the middle of a save leaves: a half-written temp file next to last.pt
            (run_dir / f".{ckpt.LAST}.tmp").write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        print(f"kill {i + 1} ({moment}, at {point}): last.pt at step {steps[-1]}, epoch "
              f"{state['progress']['epoch'] + 1}, batch {state['progress']['batch']}")
        spec = "latest" if i % 2 else str(run_dir)
        run = Training(["--resume", spec, "--output_dir", str(parts)], tmp_path / "store", uri,
                       tmp_path / f"part{i + 1}", kill_at=moments[i + 1][1] if i + 1 < len(moments) else "")
        run.wait_until(lambda run=run: "resuming run" in run.stdout())
        assert f"resuming run {run_dir.name} from {last}" in run.stdout() and f"step {steps[-1]}\n" in run.stdout()

    assert run.wait() == 0, run.stderr()[-3000:]
    assert whole.wait() == 0, whole.stderr()[-3000:]
    assert client.get_run(run_dir.name).info.status == "FINISHED"
    versions = client.search_model_versions(f"name='{MODEL_NAME}' and run_id='{run_dir.name}'")
    assert len(versions) == 1, [v.version for v in versions]
    assert torch.load(last, weights_only=True)["progress"]["registered"] == str(versions[0].version)
    assert sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")) in ([], [f".{ckpt.BEST}.tmp"])
    assert_one_production(client)
    whole_dir = only_run_dir(tmp_path / "whole")
    for name in (ckpt.LAST, ckpt.MODEL):
        diff = max_weight_diff(whole_dir / name, run_dir / name)
        assert diff <= 1e-6, f"{name}: resumed weights differ from the uninterrupted run's by {diff}"
    # metrics are sent before every checkpoint, so no step a checkpoint has passed loses its metrics
    wer_epochs = sorted({m.step for m in client.get_metric_history(run_dir.name, "wer")})
    loss_steps = {m.step for m in client.get_metric_history(run_dir.name, "loss")}
    print(f"kills at steps {steps}; wer logged for epochs {wer_epochs}; loss logged at {len(loss_steps)} of "
          f"{epochs * 4} steps")
    whole_loss = {m.step for m in client.get_metric_history(only_run_dir(tmp_path / "whole").name, "loss")}
    assert loss_steps == whole_loss and len(wer_epochs) == epochs


# ---------------------------------------------------------------- two trainings, one SQLite store


def test_two_trainings_at_once_share_a_sqlite_store(short_dev: Path, tmp_path: Path, empty_store_db: Path):
    """Started together with the same settings, they log, register and promote at nearly the same moments."""
    uri = new_store(empty_store_db, tmp_path / "store")
    args = tiny_args(make_tiny_config(short_dev, output_dir=str(tmp_path / "out"), epoch=2, **BASE))
    runs = [Training(args, tmp_path / "store", uri, tmp_path / f"train{i}") for i in range(2)]
    codes = [r.wait() for r in runs]
    assert codes == [0, 0], "\n".join(r.stderr()[-3000:] for r in runs)
    client = MlflowClient(uri)
    run_ids = [p.name for p in (tmp_path / "out").iterdir()]
    assert len(run_ids) == 2 and all(client.get_run(r).info.status == "FINISHED" for r in run_ids)
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert sorted(v.run_id for v in versions) == sorted(run_ids)
    assert_one_production(client)
    locked = sum(r.stderr().count("database is locked") for r in runs)
    print(f"'database is locked' in the trainings' stderr: {locked} times")


def test_creating_an_experiment_another_process_just_created_returns_its_id(isolated_mlflow: str):
    """The path the loser of two trainings started together takes: both found no experiment, the other one's
    insert came first (CI saw it as 'UNIQUE constraint failed: experiments.name' and a failed training)."""
    first = MlflowClient(isolated_mlflow).create_experiment("SpeechRecognition")
    assert create_experiment("SpeechRecognition", None) == first
    assert create_experiment("Another", None) != first


# ---------------------------------------------------------------- concurrent promotions


def promote_all_at_once(name: str, versions: list[str]) -> list[Exception]:
    """`registry.promote` of every version, each in its own thread, released together; the exceptions raised."""
    start, errors = threading.Barrier(len(versions)), []

    def promote(version: str) -> None:
        start.wait()
        try:
            registry.promote(name, version)
        except Exception as e:  # collected: an exception in a thread would otherwise go unnoticed
            errors.append(e)

    workers = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def test_concurrent_promotions_leave_one_production_version(isolated_mlflow: str, caplog):
    """Six threads promote six versions at once, five times over: whatever the interleaving of alias writes and
    stage transitions, exactly one version ends in stage Production, and the production alias is on it."""
    client, threads, started = MlflowClient(), 6, time.time()
    caplog.set_level(logging.INFO, logger=registry.__name__)
    for round_ in range(5):
        name = f"Concurrent{round_}"
        client.create_registered_model(name)
        versions = [str(client.create_model_version(name, source=f"file:///nowhere/{i}").version)
                    for i in range(threads)]
        assert promote_all_at_once(name, versions) == []
        winner = assert_one_production(client, name)
        assert winner in versions and registry.settle_production(client, name) == winner
    retries = [r.getMessage() for r in caplog.records if "registry busy" in r.getMessage()]
    print(f"5 rounds of {threads} concurrent promotions: {time.time() - started:.1f} s, {len(retries)} retries")


def registry_state(client: MlflowClient, name: str) -> dict:
    """Every version's stage and tags, and the model's aliases: what a failed promotion must leave untouched."""
    versions = {str(v.version): (v.current_stage, dict(v.tags)) for v in client.search_model_versions(f"name='{name}'")}
    return {"versions": versions, "aliases": dict(client.get_registered_model(name).aliases)}


def test_a_store_error_fails_the_promotion_and_leaves_the_registry_as_it_was(isolated_mlflow: str, tmp_path: Path):
    """The SQLite store's file overwritten in place (every connection then reads "file is not a database"): reading
    the Production version fails loudly instead of answering "none", so `if-better` cannot promote on a store
    error; nothing is registered or moved, and the registry reads as before once the file is back."""
    client, name = MlflowClient(), "StoreError"
    registry.register_and_promote("file:///nowhere/1", name, "run-1", 0.6, DEV, "always")
    before, db = registry_state(client, name), tmp_path / "mlflow.db"
    saved = db.read_bytes()
    with open(db, "r+b") as f:
        f.write(b"not a database " * (len(saved) // 15))
    try:
        with pytest.raises(TrackingError, match=f"cannot read {name}'s Production version .*file is not a database"):
            registry.current_production(client, name)
        with pytest.raises(TrackingError, match="nothing was registered or promoted") as failed:
            registry.register_and_promote("file:///nowhere/2", name, "run-2", 0.1, DEV, "if-better")
        assert "\n" not in str(failed.value)
    finally:
        db.write_bytes(saved)
    assert registry_state(client, name) == before
    assert registry.current_production(client, "NoSuchModel") is None  # what "none" means: no such model


def contest(name: str, wers: list[float], in_turn: bool, digests: list[str] | None = None) -> list[registry.Promotion]:
    """`if-better` promotions of one version per WER (scored on the dev set of the same place in `digests`, else
    all on DEV), one thread each. All of them decide before any moves the alias; then they move one after another
    in the order given (in_turn: each starts when the one before has finished), or all at once."""
    digests = digests or [DEV] * len(wers)
    decided, turns = threading.Barrier(len(wers)), [threading.Event() for _ in wers]
    results: dict[int, registry.Promotion] = {}
    errors: list[Exception] = []

    def promoter(i: int) -> None:
        def wait() -> None:
            decided.wait()
            if in_turn:
                turns[i].wait()
        try:
            results[i] = registry.register_and_promote(f"file:///nowhere/{name}/{i}", name, f"{name}-run-{i}",
                                                       wers[i], digests[i], "if-better", decided=wait)
        except Exception as e:  # collected: an exception in a thread would otherwise go unnoticed
            errors.append(e)
        finally:
            if i + 1 < len(turns):
                turns[i + 1].set()

    turns[0].set()
    workers = [threading.Thread(target=promoter, args=(i,)) for i in range(len(wers))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    return [results[i] for i in range(len(wers))]


@pytest.mark.parametrize(("wers", "in_turn"), [
    ([0.30, 0.45, 0.40, 0.50], True),   # the best moves first: every later, worse one has to hand it back
    ([0.50, 0.45, 0.40, 0.30], True),   # the best moves last
    ([0.45, 0.30, 0.50, 0.40], False),  # all at once
], ids=["best-first", "best-last", "all-at-once"])
def test_concurrent_if_better_promotions_leave_the_best_in_production(isolated_mlflow: str, wers: list[float],
                                                                      in_turn: bool):
    """Four trainings finish together and all beat the Production version (dev WER 0.6): each decides to promote
    before any of them moves the alias. Whatever the order of the moves, the best of them ends in Production (alias
    and stage), and its promotion says so."""
    client, name = MlflowClient(), f"IfBetter{''.join(str(int(w * 100)) for w in wers)}{int(in_turn)}"
    old = registry.register_and_promote("file:///nowhere/old", name, f"{name}-old", 0.6, DEV, "always")
    results = contest(name, wers, in_turn)
    best = results[wers.index(min(wers))]
    assert assert_one_production(client, name) == best.version, [(r.version, r.dev_wer) for r in results]
    assert best.promoted and best.previous == old.version
    # a later, worse one is compared with the winner, not with the version it replaced
    late = registry.register_and_promote("file:///nowhere/late", name, f"{name}-late", 0.35, DEV, "if-better")
    assert not late.promoted and late.previous == best.version
    assert assert_one_production(client, name) == best.version
    # policy `always` overrides the contest, and the next `if-better` compares with the version it chose
    forced = registry.register_and_promote("file:///nowhere/forced", name, f"{name}-forced", 0.9, DEV, "always")
    after = registry.register_and_promote("file:///nowhere/after", name, f"{name}-after", 0.8, DEV, "if-better")
    assert after.promoted and after.previous == forced.version
    assert assert_one_production(client, name) == after.version


@pytest.mark.parametrize("in_turn", [True, False], ids=["in-turn", "all-at-once"])
def test_concurrent_if_better_promotions_on_two_dev_sets_never_compare_across_them(isolated_mlflow: str,
                                                                                   in_turn: bool):
    """No Production version yet, and four trainings on two dev sets promote at once: they all decide to promote
    (nothing to compare with). The alias only ever moves to a better version of the same dev set, so the settling
    ends, with one version in Production, the best of its own dev set; the others' lower dev WERs from the other
    dev set do not take it. Moving in turn, the last one's dev set keeps Production (a limit: no defined winner
    across dev sets)."""
    client, name = MlflowClient(), f"TwoDevSets{int(in_turn)}"
    wers, digests = [0.10, 0.30, 0.20, 0.45], ["e2e2e2e2e2e2e2e2", DEV, "e2e2e2e2e2e2e2e2", DEV]
    results = contest(name, wers, in_turn, digests)
    winner = assert_one_production(client, name)
    same_dev_set = [r for r, d in zip(results, digests, strict=True)
                    if d == client.get_model_version(name, winner).tags[registry.DEV_DIGEST_TAG]]
    assert winner == min(same_dev_set, key=lambda r: r.dev_wer).version
    if in_turn:  # the last to move is on DEV, whose best (0.30) keeps Production from the other dev set's 0.10
        assert winner == results[1].version


# ---------------------------------------------------------------- disk full while writing a checkpoint


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mount_tmpfs(where: Path, size: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


def file_size_limit(limit: int) -> Callable[[], None]:
    """For preexec_fn: writes past `limit` bytes fail with EFBIG instead of killing the process with SIGXFSZ
    (an ignored signal stays ignored across exec)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def assert_failed_cleanly(run: Training, last: Path, before: str, reason: str) -> None:
    assert run.wait() == 1
    proc = subprocess.CompletedProcess(run.proc.args, 1, run.stdout(), run.stderr())
    assert one_line_error(proc) is None, one_line_error(proc)
    message = run.stderr().strip()
    assert f"could not write checkpoint {last}: {reason}; the previous one is intact" in message, message
    assert f"asr train --resume {last.parent} continues from it" in message
    assert sha256(last) == before  # the previous checkpoint, untouched, and still loadable
    ckpt.load_training_state(last)
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []
    print(message)


def test_disk_full_on_a_tmpfs_keeps_the_previous_checkpoint(short_dev: Path, tmp_path: Path, empty_store_db: Path):
    """Output on a tmpfs with room for one training state but not for the temp file of the next one: the second
    checkpoint fails with ENOSPC. Growing the tmpfs then lets the run resume and finish."""
    uri = new_store(empty_store_db, tmp_path / "store")
    disk = tmp_path / "disk"
    cfg = make_tiny_config(short_dev, output_dir=str(disk), epoch=1, **BASE)
    size = state_size(cfg)
    mount_tmpfs(disk, int(size * 1.5))
    try:
        run = Training(tiny_args(cfg), tmp_path / "store", uri, tmp_path / "full")
        run.wait()
        last = only_run_dir(disk) / ckpt.LAST
        assert saved_step(last) == 1
        assert_failed_cleanly(run, last, sha256(last), "No space left on device")
        client = MlflowClient(uri)
        assert client.get_run(last.parent.name).info.status == "FAILED"
        subprocess.run(["mount", "-o", f"remount,size={size * 10}", str(disk)], check=True)
        resumed = Training(["--resume", str(last.parent)], tmp_path / "store", uri, tmp_path / "resumed")
        assert resumed.wait() == 0, resumed.stderr()[-3000:]
        assert "step 1\n" in resumed.stdout()
        assert client.get_run(last.parent.name).info.status == "FINISHED"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_file_too_large_keeps_the_previous_checkpoint(short_dev: Path, tmp_path: Path, empty_store_db: Path):
    """RLIMIT_FSIZE (no root needed): a run killed after its first checkpoint is resumed by a process that may not
    write a file as large as a training state (but may grow mlflow.db and write best.pt): its first checkpoint
    fails with EFBIG. A resume without the limit finishes the run."""
    uri = new_store(empty_store_db, tmp_path / "store")
    # big enough that a training state (weights + 2 Adam moments) outweighs mlflow.db and best.pt by megabytes
    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "out"), epoch=1, **{**BASE, "rnn_dim": 256})
    size = state_size(cfg)
    first = Training(tiny_args(cfg), tmp_path / "store", uri, tmp_path / "first")
    first.wait_until(lambda: any((tmp_path / "out").glob(f"*/{ckpt.LAST}")))
    first.kill()
    last = only_run_dir(tmp_path / "out") / ckpt.LAST
    before, step = sha256(last), saved_step(last)
    limit = size * 2 // 3
    assert (tmp_path / "store" / "mlflow.db").stat().st_size < limit // 2
    limited = Training(["--resume", str(last.parent)], tmp_path / "store", uri, tmp_path / "limited",
                       preexec=file_size_limit(limit))
    assert_failed_cleanly(limited, last, before, "File too large")
    resumed = Training(["--resume", str(last.parent)], tmp_path / "store", uri, tmp_path / "resumed")
    assert resumed.wait() == 0, resumed.stderr()[-3000:]
    assert f"step {step}\n" in resumed.stdout()
    assert MlflowClient(uri).get_run(last.parent.name).info.status == "FINISHED"


def state_size(cfg) -> int:
    """Bytes of a training state (last.pt) for this config, Adam moments included."""
    import io

    from asr.model import SpeechModel
    from asr.text import VOCAB
    from asr.training.loop import one_cycle
    from asr.training.state import Progress, training_state

    model = SpeechModel.from_config(cfg, len(VOCAB))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.learning_rate)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the moments
    state = training_state(cfg, model, optimizer, one_cycle(optimizer, cfg.optim.learning_rate, 10),
                           torch.amp.GradScaler("cpu", enabled=False), Progress(), "0" * 32)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()
