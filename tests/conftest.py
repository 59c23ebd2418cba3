"""Shared fixtures: where the real LibriSpeech sample lives, tiny training configs, isolated MLflow stores,
and one real training run that several end-to-end tests share."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared/data/LibriSpeech"
FILE_ID = "1089-134686-0000"
TRANSCRIPT = ("HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT MUTTON "
              "PIECES TO BE LADLED OUT IN THICK PEPPERED FLOUR FATTENED SAUCE")
MODEL_NAME = "SpeechRecognitionModel"
BIN = Path(sys.executable).parent  # the venv's bin: `asr`, `mlflow` and the `python` that `mlflow run` calls

# Small enough to train in seconds on 2 CPU cores; fp32 so runs are reproducible on any CPU. Acoustic model only
# (lm_order 0: greedy decoding, no LM built or tuned): the tests of the decoder a model carries train with one
# (`trained_lm`).
TINY = dict(rnn_dim=32, rnn_layers=1, cnn_layers=1, cnn_channels=4, epoch=1, batch=2, max_utterances=2,
            precision="fp32", lm_order=0)

# MLflow state that leaks through the environment into later tests and subprocesses.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
              "MLFLOW_RUN_ID")

# No network here: keep MLflow from trying to send usage telemetry, in this process and its children.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# One intra-op thread, in this process and its children (torch reads it when first imported, after this): the
# tests' models are tiny, so a second thread only adds synchronisation, and on 2 cores shared with the servers and
# trainings the tests start alongside, torch's spinning threads made in-process model code 5-10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def split_dir(name: str) -> Path:
    """A split of the shared real LibriSpeech sample; skips the test when it is not there."""
    path = LIBRISPEECH / name
    if not path.is_dir():
        pytest.skip(f"real LibriSpeech split not available at {path} (expected next to the repository in "
                    "../shared/data/LibriSpeech)")
    return path


def short_split(dest: Path, source: Path, count: int) -> Path:
    """A split folder holding the `count` shortest utterances of `source`: the transcripts are copied and
    the audio files linked, so it is the real corpus, just less of it."""
    import soundfile as sf

    from asr.data.dataset import read_split

    utts = sorted(read_split(source), key=lambda u: (sf.info(str(u.path)).frames, u.file_id))[:count]
    for u in utts:
        chapter = dest / u.speaker / u.chapter
        chapter.mkdir(parents=True, exist_ok=True)
        trans = f"{u.speaker}-{u.chapter}.trans.txt"
        if not (chapter / trans).exists():
            shutil.copy2(source / u.speaker / u.chapter / trans, chapter / trans)
        (chapter / u.path.name).symlink_to(u.path)
    return dest


def relabelled_split(dest: Path, source: Path, transcripts: list[str]) -> Path:
    """A split of the first len(transcripts) utterances of `source` (audio linked, real speech) whose transcript
    lines say `transcripts` instead: the plumbing does not care what the audio says."""
    from asr.data.dataset import read_split

    utts = read_split(source)[: len(transcripts)]
    assert len(utts) == len(transcripts)
    lines: dict[Path, list[str]] = {}
    for u, line in zip(utts, transcripts, strict=True):
        chapter = dest / u.speaker / u.chapter
        chapter.mkdir(parents=True, exist_ok=True)
        (chapter / u.path.name).symlink_to(u.path.resolve())
        lines.setdefault(chapter / f"{u.speaker}-{u.chapter}.trans.txt", []).append(f"{u.file_id} {line}")
    for trans, text in lines.items():
        trans.write_text("\n".join(text) + "\n", encoding="utf-8")
    return dest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """$XDG_CACHE_HOME in a temporary folder for the whole session, in this process and the ones it starts: what
    the code caches there (the --precision auto probe's timings, the default feature store) must neither come from
    nor land in the real ~/.cache of whoever runs the tests."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(autouse=True)
def restore_sys_path() -> Iterator[None]:
    """sys.path as it was before each test: mlflow.pyfunc.load_model leaves a model's code/ folder first on it, and
    processes a later test spawns would import that copy of asr instead of this one."""
    before = list(sys.path)
    yield
    sys.path[:] = before


@pytest.fixture(scope="session")
def short_dev(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4 shortest dev-clean utterances (2.7-4.8 s): training on them takes seconds, where a GRU
    backward pass over the long ones takes far longer on CPU. Without the shared LibriSpeech sample, the 4
    shortest of a small corpus synthesized here, so the plumbing tests (training, resuming, faults, tracking)
    run anywhere; only the tests about real speech then skip."""
    dest = tmp_path_factory.mktemp("short-dev") / "dev-clean"
    if (LIBRISPEECH / "dev-clean").is_dir():
        return short_split(dest, LIBRISPEECH / "dev-clean", 4)
    return short_split(dest, synthesized_corpus(tmp_path_factory) / "dev", 4)


def synthesized_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus of a few minutes in the LibriSpeech layout, spoken by eSpeak NG (`asr data synth`, seconds)."""
    from asr.data.synth.corpus import SynthConfig, synthesize_corpus

    root = tmp_path_factory.getbasetemp() / "synthesized-corpus"
    if not (root / "corpus.json").is_file():
        synthesize_corpus(SynthConfig(root, seed=0, train_minutes=0.5, dev_minutes=0.5, test_minutes=0.25,
                                      workers=2), progress=False)
    return root


@pytest.fixture
def tiny_config(short_dev: Path):
    """Factory of TrainConfigs that train in seconds: the shortest dev-clean utterances as training and
    dev data, no test split."""
    return functools.partial(make_tiny_config, short_dev)


def make_tiny_config(train_dir: Path, **overrides):
    from asr.config import from_dict
    from asr.settings import TrainConfig

    values = dict(train_data=str(train_dir), dev_data=str(train_dir), test_data="", **TINY)
    values.update(overrides)
    return from_dict(TrainConfig, values, strict=True)


def tiny_args(cfg) -> list[str]:
    """The same config as command-line options (`--name value` for every field)."""
    from asr.config import to_params

    return [tok for k, v in to_params(cfg).items() for tok in (f"--{k}", str(v))]


def one_line_error(proc: subprocess.CompletedProcess) -> str | None:
    """None when the command failed the way a user error must: exit 1, one `Error: ...` line, no traceback."""
    problems = []
    if proc.returncode != 1:
        problems.append(f"exit code {proc.returncode}")
    if "Traceback" in proc.stderr + proc.stdout:
        problems.append("a traceback")
    lines = proc.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("Error:"):
        problems.append(f"stderr is not one 'Error:' line: {proc.stderr!r}")
    return "; ".join(problems) or None


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Runs the block with `n` intra-op threads: comparing a tiny model's transcripts across processes needs the
    same float summation order, since its outputs are near-ties that it can flip."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def sqlite_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def subprocess_env(tracking_uri: str | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: no MLflow state inherited from this process, the venv first on
    PATH (so `python` in the MLproject commands is this interpreter), and the given tracking store."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("ASR_PROGRESS", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def asr_command() -> list[str]:
    """The installed `asr` console script (falls back to `python -m asr` when the script is missing)."""
    script = BIN / "asr"
    return [str(script)] if script.exists() else [sys.executable, "-m", "asr"]


def run_cli(args: list[str], cwd: Path, tracking_uri: str | None = None, timeout: float = 300,
            threads: int | None = None) -> subprocess.CompletedProcess:
    env = subprocess_env(tracking_uri)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_cli_alongside(pool: Executor, args: list[str], cwd: Path, tracking_uri: str | None = None,
                      threads: int | None = None) -> Future[subprocess.CompletedProcess]:
    """run_cli in `pool`, so this thread can go on (e.g. with run_cli_here) while the process runs; its environment
    is taken here, before the commands run in this process set anything in it."""
    env = subprocess_env(tracking_uri)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return pool.submit(subprocess.run, args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def run_cli_here(args: list[str], cwd: Path, tracking_uri: str | None = None,
                 env_vars: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`asr ARGS` run in this process through click's CliRunner, with what run_cli gives a subprocess (cwd, the
    tracking store, no MLflow state of this process); returns what run_cli returns: exit code, stdout, stderr. An
    exception the command lets through is exit 1 with its traceback in stderr, as a process would show it. For
    checks of what a command says and does, not of the process: it saves the interpreter start-up and the imports
    of torch and MLflow (seconds each). What only a process shows (its exit status, library output at start-up)
    stays with the real subprocess each such test keeps (run_cli). `env_vars` are set for the command. MLflow's
    global state, the cwd, the environment and torch's thread count are put back afterwards."""
    import traceback

    import mlflow
    import mlflow.tracking.fluent as fluent
    import torch
    from click.testing import CliRunner

    from asr.cli import main

    env: dict[str, str | None] = {k: None for k in MLFLOW_ENV} | {"ASR_PROGRESS": None}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.update(env_vars or {})
    saved_cwd, saved_env, threads = Path.cwd(), dict(os.environ), torch.get_num_threads()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, args, env=env, prog_name="asr")
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        fluent._active_experiment_id = None
        torch.set_num_threads(threads)
        os.chdir(saved_cwd)
        for k in set(os.environ) - set(saved_env):  # what the command set in the environment (it would leak)
            del os.environ[k]
        for k, v in saved_env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # starts "Traceback (most recent call last)"
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


@contextmanager
def mlflow_store(root: Path) -> Iterator[str]:
    """Points this process's MLflow at a SQLite store in `root` (cwd = root, so ./mlruns lands there too)
    and puts every piece of global MLflow state back afterwards."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    saved_env = {k: os.environ.get(k) for k in MLFLOW_ENV}
    saved_cwd = Path.cwd()
    uri = sqlite_uri(root)
    for k in MLFLOW_ENV:
        os.environ.pop(k, None)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(root)
    mlflow.set_tracking_uri(uri)
    fluent._active_experiment_id = None  # set by mlflow.set_experiment; would point into another store
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.flush_async_logging()
        mlflow.set_tracking_uri(None)
        fluent._active_experiment_id = None
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.chdir(saved_cwd)


@pytest.fixture(scope="session")
def empty_store_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialized, empty MLflow SQLite database. Creating one runs every schema migration (several
    seconds), so each test's fresh store starts as a copy of this file."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("empty-store")
    with mlflow_store(root):
        MlflowClient().search_experiments()
    return root / "mlflow.db"


def new_store(empty_store_db: Path, root: Path) -> str:
    """A fresh MLflow store at root/mlflow.db; returns its tracking URI."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(empty_store_db, root / "mlflow.db")
    return sqlite_uri(root)


@pytest.fixture
def isolated_mlflow(tmp_path: Path, empty_store_db: Path) -> Iterator[str]:
    """A fresh, empty MLflow SQLite store in tmp_path, with cwd = tmp_path; yields its tracking URI."""
    new_store(empty_store_db, tmp_path)
    with mlflow_store(tmp_path) as uri:
        yield uri


@dataclass
class TrainedStore:
    root: Path           # the store's folder: mlflow.db, mlruns/, outputs/
    uri: str             # its tracking URI
    cfg: object          # the TrainConfig it was trained with
    result: object       # asr.training.train.TrainResult
    stdout: str          # what training printed
    versions: dict       # registry right after training: version -> (stage, aliases, tags)
    registered_aliases: dict


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, short_dev: Path, empty_store_db: Path) -> TrainedStore:
    """One real training run (2 epochs x 2 steps on short dev-clean utterances, validated on all of
    dev-clean, scored on test-clean) registered as version 1 of SpeechRecognitionModel in its own SQLite
    store. Tests that change the registry start from `versions`, the snapshot taken right after training."""
    return train_into_store(tmp_path_factory.mktemp("trained"), empty_store_db, short_dev, run_name="tiny-e2e")


@pytest.fixture(scope="session")
def trained_lm(tmp_path_factory: pytest.TempPathFactory, short_dev: Path, empty_store_db: Path) -> TrainedStore:
    """`trained`'s run with the default decoder attached: a trigram LM built from the training transcripts, its
    weight and word score tuned on dev-clean (a 2 x 2 grid, to keep it cheap), scored on test-clean; registered
    as version 1 in its own store."""
    return train_into_store(tmp_path_factory.mktemp("trained-lm"), empty_store_db, short_dev, run_name="tiny-lm",
                            lm_order=3, lm_weights="0.5,2", word_scores="0,1")


def train_into_store(root: Path, empty_store_db: Path, train_dir: Path, **overrides) -> TrainedStore:
    """A tiny training (2 epochs on `train_dir`, dev-clean, test-clean) registered in a new store at `root`."""
    import io
    from contextlib import redirect_stdout

    from mlflow import MlflowClient

    from asr.training.train import train

    new_store(empty_store_db, root)
    cfg = make_tiny_config(train_dir, epoch=2, max_utterances=4, dev_data=str(split_dir("dev-clean")),
                           test_data=str(split_dir("test-clean")), output_dir=str(root / "outputs"), **overrides)
    with mlflow_store(root):
        out = io.StringIO()
        with redirect_stdout(out):
            result = train(cfg, progress=False)
        client = MlflowClient()
        versions = {}
        for mv in client.search_model_versions(f"name='{MODEL_NAME}'"):
            full = client.get_model_version(MODEL_NAME, mv.version)
            versions[str(full.version)] = (full.current_stage, list(full.aliases), dict(full.tags))
        aliases = dict(client.get_registered_model(MODEL_NAME).aliases)
    return TrainedStore(root, sqlite_uri(root), cfg, result, out.getvalue(), versions, aliases)


@pytest.fixture
def trained_store(trained: TrainedStore) -> Iterator[TrainedStore]:
    """The shared trained store, made the current MLflow store (and cwd) for one test."""
    with mlflow_store(trained.root):
        yield trained


@contextmanager
def served_model(trained: TrainedStore, uri: str, log_path: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """`mlflow models serve -m URI --env-manager local` of the trained store's model on a free port (one worker,
    one thread), answering /ping; yields the port, and stops the server afterwards. `env` is added to the server's
    environment (e.g. ASR_SERVE_ALLOWED_ROOTS, which is never inherited from this process: paths are off unless
    given)."""
    from asr.pyfunc import ROOTS_ENV

    port = free_port()
    server_env = subprocess_env(trained.uri)
    server_env.pop(ROOTS_ENV, None)
    server_env["OMP_NUM_THREADS"] = "1"
    server_env.update(env or {})
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=trained.root, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_until_it_answers(proc, port, log_path)
            yield port
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def wait_until_it_answers(proc: subprocess.Popen, port: int, log_path: Path, seconds: float = 180) -> None:
    """Returns once the scoring server on `port` answers /ping with 200; fails the test with the end of its log when
    it exits first or `seconds` pass."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"server did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_run_dir(output_dir: Path) -> Path:
    """The one run folder (OUTPUT_DIR/RUN_ID) a training wrote."""
    runs = [p for p in output_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def randomize_layernorms(model):
    """`model` in eval mode with random LayerNorm gains and biases, as after training: fresh ones are exactly 1 and
    0, which hides whatever depends on them."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def copy_project(dest: Path) -> Path:
    """A copy of the MLflow project (what `mlflow run .` needs), so runs never write into the repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("MLproject", "main.py", "conda.yaml", "requirements.lock"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "asr", dest / "asr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest
