"""A team's shared tracking server, for real: PostgreSQL as the backend store, `asr server` proxying the artifacts,
and training and validation as clients that know nothing but its URL. Also: training against a server that does
not answer fails in seconds, or trains into the local store with --offline_ok, and a server that goes away
mid-run costs metrics latency, not the training.

PostgreSQL comes from the machine (`.ci/run` installs Debian's `postgresql` package); the tests that need it skip,
saying why, when its binaries are missing or it cannot start.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import requests
from conftest import (
    FILE_ID,
    MODEL_NAME,
    TRANSCRIPT,
    asr_command,
    free_port,
    make_tiny_config,
    new_store,
    one_line_error,
    run_cli,
    run_cli_alongside,
    run_cli_here,
    split_dir,
    sqlite_uri,
    subprocess_env,
    tiny_args,
)
from mlflow import MlflowClient

from asr.tracking import store
from asr.tracking.metric_log import MetricLog

pytestmark = pytest.mark.slow  # PostgreSQL and MLflow servers

PG_PASSWORD = "s3cret-team"  # in the store URI, as a real team's would be


def postgres_bin() -> Path:
    """The folder holding initdb and pg_ctl: wherever PATH finds them, else where Debian's `postgresql` package
    puts them (/usr/lib/postgresql/VERSION/bin, not on PATH), newest version first."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
                "install Debian's postgresql package (.ci/run does)")


def as_postgres_user() -> list[str]:
    """Command prefix for PostgreSQL's tools: it refuses to run as root, so root runs them as user `postgres`."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    pytest.skip("running as root and `runuser` is missing, so PostgreSQL cannot be started as user postgres")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port with a database `mlflow` owned by user `asr`
    (password authentication); yields its SQLAlchemy URI."""
    import psycopg2

    bin_dir, prefix = postgres_bin(), as_postgres_user()
    # Not under pytest's tmp_path: as root that lies in a 0700 folder the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="asr-pg-", dir="/tmp" if prefix else None))
    (root / "pw").write_text(PG_PASSWORD + "\n")
    if prefix:
        user = pwd.getpwnam("postgres")
        for path in (root, root / "pw"):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(prefix + [str(bin_dir / args[0]), *args[1:]], cwd=root, capture_output=True,
                              text=True, timeout=60)

    init = pg("initdb", "-D", str(root / "data"), "-U", "asr", "--auth=scram-sha-256", f"--pwfile={root / 'pw'}",
              "--no-sync", "-E", "UTF8")
    started = init if init.returncode else pg("pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w",
                                              "-t", "30", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
                                              "-c fsync=off", "start")
    if started.returncode:
        why = (started.stderr.strip().splitlines() or ["(no message)"])[-1]
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL from {bin_dir} cannot start here: {why}")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="asr", password=PG_PASSWORD, dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql://asr:{PG_PASSWORD}@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class SharedServer:
    uri: str              # what clients set MLFLOW_TRACKING_URI to
    store: str            # the PostgreSQL backend store URI
    artifacts: Path       # --artifacts_destination


@pytest.fixture(scope="module")
def shared_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """`asr server` itself, as a team runs it: PostgreSQL store, proxied artifacts, allowed hosts and origins."""
    root = tmp_path_factory.mktemp("shared-server")
    port = free_port()
    artifacts = root / "artifacts"
    argv = asr_command() + ["server", "--backend_store_uri", postgres, "--artifacts_destination", str(artifacts),
                            "--port", str(port), "--workers", "1",
                            "--allowed_hosts", f"127.0.0.1:{port},tracking.team.example",
                            "--cors_allowed_origins", "http://tracking.team.example"]
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=root, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: the server forks workers
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"`asr server` did not come up on {uri}:\n{(root / 'server.log').read_text()[-3000:]}")
        yield SharedServer(uri, postgres, artifacts)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a throwaway server and its workers: a graceful stop takes seconds
        proc.wait()


# ---------------------------------------------------------------- the whole life cycle through the shared server

def test_train_and_validate_through_a_shared_postgresql_server(shared_server, short_dev, tmp_path):
    import psycopg2

    uri = shared_server.uri
    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "outputs"), run_name="shared-server")
    trained = run_cli(asr_command() + ["train", *tiny_args(cfg)], cwd=tmp_path, tracking_uri=uri, timeout=240)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "version 1 promoted to Production (alias production)" in trained.stdout

    validated = run_cli(asr_command() + ["validate", "--file_id", FILE_ID, "--dataset", str(split_dir("test-clean"))],
                        cwd=tmp_path, tracking_uri=uri, timeout=240)
    assert validated.returncode == 0, validated.stderr[-3000:]
    lines = validated.stdout.splitlines()
    assert f"target:    {TRANSCRIPT.lower()}" in lines
    assert any(line.startswith("WER ") and "  CER " in line for line in lines), validated.stdout

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias(MODEL_NAME, "production")
    assert (str(mv.version), mv.current_stage) == ("1", "Production")
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "shared-server"
    assert {"loss", "learning_rate", "val_loss", "wer", "cer", "best_wer"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
    # artifacts went through the server's proxy into --artifacts_destination, none into the client's folder
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    logged = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert logged.artifact_location.startswith("mlflow-artifacts:")
    assert list(shared_server.artifacts.rglob("MLmodel")) and list(shared_server.artifacts.rglob("config.json"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    # the validation is a run on the same server
    exp = client.get_experiment_by_name("SpeechRecognition")
    assert client.search_runs([exp.experiment_id], "tags.task = 'validate'")

    # and it all lives in PostgreSQL
    with psycopg2.connect(shared_server.store) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT name FROM registered_models")
        assert cur.fetchall() == [(MODEL_NAME,)]
    conn.close()

    # --allowed_hosts and --cors_allowed_origins reached `mlflow server`: its hosts are served, others refused
    # (DNS rebinding), and only the listed web origins may change things (the UI's own, from other machines)
    api = f"{uri}/api/2.0/mlflow/experiments/search"
    assert requests.post(api, json={"max_results": 1}, headers={"Host": "tracking.team.example"},
                         timeout=10).status_code == 200
    assert requests.post(api, json={"max_results": 1}, headers={"Host": "attacker.example"},
                         timeout=10).status_code == 403
    for origin, status in (("http://tracking.team.example", 200), ("http://attacker.example", 403)):
        assert requests.post(api, json={"max_results": 1}, headers={"Origin": origin}, timeout=10).status_code == status


def test_no_secrets_in_logged_params_tags_or_artifacts(shared_server, short_dev, tmp_path):
    """Credentials in the tracking URI (the client's) and in the store URI (the server's) reach no param, tag or
    artifact of a run: users share runs, not passwords."""
    secret = "client-secret-42"
    with_credentials = shared_server.uri.replace("http://", f"http://alice:{secret}@")
    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "outputs"), run_name="secrets", epoch=1)
    trained = run_cli(asr_command() + ["train", *tiny_args(cfg), "--promote", "never"], cwd=tmp_path,
                      tracking_uri=with_credentials, timeout=240)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert secret not in trained.stdout + trained.stderr and PG_PASSWORD not in trained.stdout + trained.stderr

    client = MlflowClient(tracking_uri=shared_server.uri, registry_uri=shared_server.uri)
    exp = client.get_experiment_by_name("SpeechRecognition")
    run = client.search_runs([exp.experiment_id], "attributes.run_name = 'secrets'")[0]
    texts = [repr(run.data.params), repr(run.data.tags), repr(run.info)]
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "artifacts"),
                                                     tracking_uri=shared_server.uri))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert any(p.name == "config.json" for p in files)
    texts += [p.read_bytes().decode("utf-8", "replace") for p in files if p.stat().st_size < 5_000_000]
    for text in texts:
        assert secret not in text and PG_PASSWORD not in text


# ---------------------------------------------------------------- a server that does not answer

def test_train_against_an_unreachable_server_fails_fast(short_dev, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "outputs"))
    started = time.monotonic()
    proc = run_cli(asr_command() + ["train", *tiny_args(cfg)], cwd=tmp_path, tracking_uri=uri, timeout=120)
    elapsed = time.monotonic() - started
    assert (problem := one_line_error(proc)) is None, problem
    assert f"{uri} is unreachable (Connection refused)" in proc.stderr and "--offline_ok True" in proc.stderr
    assert elapsed < 20, f"took {elapsed:.0f} s to give up"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_commands_loading_a_model_from_an_unreachable_server_fail_fast(short_dev, tmp_path):
    """validate, evaluate, transcribe and export against a port nobody listens on: one line naming the model URI
    and the server, in seconds (MLflow's own retries of a dead server take minutes: 7 retries with backoff)."""
    from asr.data.dataset import read_split

    uri = f"http://127.0.0.1:{free_port()}"  # bound, then closed: nobody listens there
    utterance = read_split(short_dev)[0]
    model = "models:/SpeechRecognitionModel@production"
    cases = {
        "validate": (["validate", "--file_id", utterance.file_id, "--dataset", str(short_dev)],
                     "models:/SpeechRecognitionModel/Production"),
        "evaluate": (["evaluate", "--dataset", str(short_dev), "--model_uri", model], model),
        "transcribe": (["transcribe", str(utterance.path), "--model_uri", f"runs:/{'0' * 32}/model"],
                       f"runs:/{'0' * 32}/model"),
        "export": (["export", "--model_uri", "0" * 32, "--out", str(tmp_path / "model.onnx")],
                   f"runs:/{'0' * 32}/model"),
    }

    def run(name: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        return run_cli_here(cases[name][0], cwd=tmp_path, tracking_uri=uri), time.monotonic() - started

    # validate as a real `asr` process, alongside the others in this one (seconds of start-up saved each)
    with ThreadPoolExecutor(max_workers=1) as pool:
        started, finished = time.monotonic(), []
        process = run_cli_alongside(pool, asr_command() + cases["validate"][0], tmp_path, uri)
        process.add_done_callback(lambda _: finished.append(time.monotonic()))
        results = {name: run(name) for name in cases if name != "validate"}
        results = {"validate": (process.result(), finished[0] - started), **results}
    failures = []
    for name, (proc, elapsed) in results.items():
        expected = f"cannot load {cases[name][1]}: MLflow tracking server {uri} is unreachable (Connection refused)"
        if problem := one_line_error(proc):
            failures.append(f"{name}: {problem}")
        elif expected not in proc.stderr:
            failures.append(f"{name}: {proc.stderr!r} lacks {expected!r}")
        elif elapsed > 30:
            failures.append(f"{name}: took {elapsed:.0f} s to give up")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_offline_ok_trains_into_the_local_store(short_dev, tmp_path, empty_store_db):
    new_store(empty_store_db, tmp_path)  # ./mlflow.db, the local store, already migrated (saves seconds)
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "outputs"), offline_ok=True, run_name="offline")
    proc = run_cli(asr_command() + ["train", *tiny_args(cfg)], cwd=tmp_path, tracking_uri=uri, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{uri} is unreachable" in proc.stderr and "logging to sqlite:///mlflow.db" in proc.stderr
    assert "version 1 promoted to Production" in proc.stdout

    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path), registry_uri=sqlite_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("SpeechRecognition").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "offline"
    assert {"loss", "wer", "best_wer"} <= set(run.data.metrics)
    assert client.get_model_version_by_alias(MODEL_NAME, "production").run_id == run.info.run_id


# ---------------------------------------------------------------- a server that goes away mid-run

def test_metrics_outlive_a_server_outage(shared_server, tmp_path, capsys):
    """Sends to a server that does not answer fail fast (no minutes of MLflow retries), keep the metrics and warn
    once; what is still unsent when training stops is kept in the run's folder, and the next MetricLog of the run
    (`--resume`) sends it, with its original steps, once the server answers again."""
    live = shared_server.uri
    client = MlflowClient(tracking_uri=live, registry_uri=live)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        mlflow.set_tracking_uri(dead)
        metrics = MetricLog(run_id, tmp_path)
        started = time.monotonic()
        for step in (1, 2, 3):
            metrics.log({"loss": 1.0 / step}, step)
            metrics.next_send = 0  # as if SEND_EVERY (or the backoff) had passed
        assert metrics.send() is False
        assert time.monotonic() - started < 15, "sends to a dead server must not wait on MLflow's retries"
        assert len(metrics.pending) == 3 and metrics.failures == 3
        assert capsys.readouterr().err.count("does not answer") == 1
        with pytest.raises(store.TrackingUnreachable, match=f"asr train --resume {tmp_path}$"):
            metrics.close(attempts=1)
        assert (tmp_path / MetricLog.UNSENT).is_file()

        mlflow.set_tracking_uri(live)  # the server is back; the run is resumed
        resumed = MetricLog(run_id, tmp_path)
        resumed.log({"loss": 0.25}, 4)
        resumed.close()
        assert not (tmp_path / MetricLog.UNSENT).exists()
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
            (1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    finally:
        mlflow.set_tracking_uri(None)
