"""`asr server`: the store it serves (--backend_store_uri, else a database in $MLFLOW_TRACKING_URI, else
sqlite:///mlflow.db) and a port already taken said in one line before MLflow starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import asr_command, free_port, one_line_error, run_cli_here, subprocess_env

from asr.cli import store_from_environment

DEFAULT = "sqlite:///mlflow.db"


@pytest.mark.parametrize("tracking_uri, store", [
    ("", DEFAULT),
    ("sqlite:////srv/mlflow/team.db", "sqlite:////srv/mlflow/team.db"),
    ("postgresql://asr:pw@db:5432/mlflow", "postgresql://asr:pw@db:5432/mlflow"),
    ("postgresql+psycopg2://asr@db/mlflow", "postgresql+psycopg2://asr@db/mlflow"),
    ("mysql://asr@db/mlflow", "mysql://asr@db/mlflow"),
])
def test_a_database_in_the_environment_is_the_store(tracking_uri, store):
    assert store_from_environment(tracking_uri, DEFAULT) == (store, None)


def test_a_server_in_the_environment_is_said_to_be_no_store():
    store, note = store_from_environment("https://alice:pw@mlflow.example.com", DEFAULT)
    assert store == DEFAULT
    assert note == ("$MLFLOW_TRACKING_URI=https://alice:***@mlflow.example.com names a tracking server, not a store: "
                    "serving sqlite:///mlflow.db; --backend_store_uri chooses the store")
    assert store_from_environment("./mlruns", DEFAULT)[1].startswith("$MLFLOW_TRACKING_URI=./mlruns names no database")


def test_a_taken_port_is_said_in_one_line_at_once(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli_here(["server", "--port", str(port)], tmp_path,
                            env_vars={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert one_line_error(done) is None, done
    assert done.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: "), done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == []  # MLflow not started (in-process: it would exec)


@pytest.mark.slow  # an MLflow server process
def test_the_server_keeps_its_runs_in_the_database_the_environment_names(tmp_path: Path):
    """MLFLOW_TRACKING_URI=sqlite:///.../team.db exported and no --backend_store_uri: the server creates and serves
    team.db, and leaves no mlflow.db in its folder."""
    team = tmp_path / "store" / "team.db"
    team.parent.mkdir()
    uri = f"sqlite:///{team}"
    proc = subprocess.Popen([*asr_command(), "server", "--port", str(free_port()), "--workers", "1"],
                            cwd=tmp_path, env={**subprocess_env(), "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # its own process group: the server forks workers
    try:
        first = proc.stdout.readline()
        deadline = time.monotonic() + 90
        while not team.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert f"(store {uri})" in first, first
    assert team.exists() and not (tmp_path / "mlflow.db").exists()
