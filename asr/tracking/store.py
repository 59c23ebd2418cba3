"""Where runs go: the tracking store, the experiment, and a tracking server that is down or goes away."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from asr import UserError, first_line, redact
from asr.loading import tracking_reference

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

PROBE_TIMEOUT = 5.0      # seconds the reachability probe waits for an answer
SEND_ERRORS = (MlflowException, requests.RequestException, OSError)


class TrackingError(UserError):
    """An MLflow store or registry problem, with what to do about it."""


class TrackingUnreachable(TrackingError):
    """The tracking server does not answer."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup_uri(model_ref: str = "") -> str:
    """Points MLflow at the tracking store (for commands that read models but log no run); when `model_ref` is
    loaded from it, checks first that a tracking server answers (check_model_source)."""
    if model_ref:
        check_model_source(model_ref)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if urllib.parse.urlsplit(uri).password:  # MLflow would print "View run at <uri>", password included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return uri


def setup(experiment: str) -> str:
    """Points MLflow at the tracking store and returns the experiment id, creating the experiment if needed.

    With the default local store, artifacts go under ./mlruns next to mlflow.db. A tracking server that does not
    answer is a TrackingUnreachable error within seconds, not minutes of MLflow's retries.
    """
    check_answers(tracking_uri(), f"cannot use experiment {experiment!r}")
    uri = setup_uri()
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`: the run, and so its experiment, already exist
        return mlflow.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            exp_id = found.experiment_id
        else:
            location = Path("mlruns").resolve().as_uri() if uri.startswith("sqlite:") else None
            exp_id = create_experiment(experiment, location)
    except MlflowException as e:
        raise TrackingError(f"cannot use MLflow tracking store {redact(uri)}: {e.message.splitlines()[0]}") from None
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def create_experiment(name: str, artifact_location: str | None) -> str:
    """Creates experiment `name` and returns its id; when another process created it first (two trainings started
    together on a new store both find no experiment, and one insert loses), returns the id of that one."""
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def unreachable(uri: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the http(s) tracking server at `uri` does not answer GET /health within `timeout` seconds; None when it
    answers. MLflow's own client retries a dead server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, exponential
    backoff, MLFLOW_HTTP_REQUEST_TIMEOUT=120 s); one short probe before any compute makes that an immediate error.
    Any answer below HTTP 500 counts (401 from an auth proxy: MLflow's own calls say what is wrong); other stores
    (sqlite:, file:, databricks) are not probed."""
    if not uri.lower().startswith(("http://", "https://")):
        return None
    try:
        status = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).status_code
    except requests.exceptions.SSLError:
        return None  # something answers; MLflow's own calls will report the certificate problem
    except requests.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.RequestException as e:
        return failure(e)
    return f"HTTP {status}" if status >= 500 else None  # 5xx: e.g. a proxy in front of a server that is down


def check_run(run_id: str) -> None:
    """Raises TrackingError unless the tracking store holds the run (the one a resume continues)."""
    try:
        mlflow.get_run(run_id)
    except MlflowException as e:
        raise TrackingError(f"cannot continue MLflow run {run_id}: {first_line(e)} in "
                            f"{redact(mlflow.get_tracking_uri())} (resume with the tracking store it was "
                            "logged to)") from None


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Training's probe: raises TrackingUnreachable, with --offline_ok among the ways out, unless the tracking
    server at `uri` answers (see unreachable)."""
    if problem := unreachable(uri, timeout):
        raise TrackingUnreachable(f"MLflow tracking server {redact(uri)} is unreachable ({problem}); start it "
                                  f"(`asr server`), fix MLFLOW_TRACKING_URI, or train with --offline_ok True to log "
                                  f"to {DEFAULT_TRACKING_URI} instead")


def check_answers(uri: str, doing: str) -> None:
    """The probe for commands other than training: raises TrackingUnreachable, saying what needed the server
    (`doing`), unless the tracking server at `uri` answers (see unreachable)."""
    if problem := unreachable(uri):
        raise TrackingUnreachable(f"{doing}: MLflow tracking server {redact(uri)} is unreachable ({problem}); "
                                  "start it (`asr server`) or fix MLFLOW_TRACKING_URI")


def check_model_source(model_ref: str) -> None:
    """Raises TrackingUnreachable naming the model when `model_ref` is loaded from a tracking server (a models:/
    or runs:/ URI, a run id) that does not answer, and TrackingError when it is loaded from the default local
    store and there is none here (MLflow would create an empty one, then find no model in it); local checkpoints
    and folders need no store."""
    if uri := tracking_reference(model_ref):
        check_local_store(f"cannot load {uri}")
        check_answers(tracking_uri(), f"cannot load {uri}")


def check_local_store(doing: str) -> None:
    """Raises TrackingError, saying what needed the store (`doing`), when MLFLOW_TRACKING_URI is unset and the
    default store (./mlflow.db) does not exist: reading from it would create it."""
    local = DEFAULT_TRACKING_URI.removeprefix("sqlite:///")
    if tracking_uri() == DEFAULT_TRACKING_URI and not Path(local).exists():
        raise TrackingError(f"{doing}: there is no tracking store here (MLFLOW_TRACKING_URI is unset and there is "
                            f"no {local} in {Path.cwd()}); run where you trained, or set MLFLOW_TRACKING_URI to "
                            "the store the model is in")


def failure(e: Exception) -> str:
    """The operating system's words for a failed connection (Connection refused, Name or service not known), which
    requests and MLflow bury in a paragraph; else the first line of the message."""
    text = str(e)
    if found := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
        return found.group(1).strip()
    return first_line(e)[:200]


def use_reachable_store(offline_ok: bool) -> str:
    """The tracking URI training logs to: $MLFLOW_TRACKING_URI when it answers; else, with offline_ok, the local
    store, saying so (hours of compute are worth more than live curves); else a TrackingUnreachable error."""
    try:
        check_reachable(tracking_uri())
    except TrackingUnreachable as e:
        if not offline_ok:
            raise
        print(f"Warning: {str(e).split('; ')[0]}; --offline_ok: training anyway and logging to "
              f"{DEFAULT_TRACKING_URI} in {Path.cwd()}", file=sys.stderr)
        os.environ["MLFLOW_TRACKING_URI"] = DEFAULT_TRACKING_URI
    return tracking_uri()


@contextlib.contextmanager
def quick_http(timeout: int = 5, retries: int = 1) -> Iterator[None]:
    """Bounds MLflow's own HTTP retries for the calls inside (it reads these variables on every request): by
    default it retries a dead server 7 times with backoff up to 2 minutes and 120 s timeouts, minutes per call,
    which would stall training at every attempt to log."""
    bounds = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    saved = {k: os.environ.get(k) for k in bounds}
    os.environ.update(bounds)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def side_run(task: str, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[None]:
    """A short run of its own, in the current experiment, for a job that is not training (evaluate, lm-tune,
    validate): named TASK-NAME, tagged task=TASK and with `tags`, with its settings as params."""
    with mlflow.start_run(run_name=f"{task}-{name}"):
        mlflow.set_tags({"task": task, **(tags or {})})
        mlflow.log_params(params)
        yield


def end_run(status: str) -> None:
    """Ends the active run as `status` with one bounded attempt: after a failure the tracking server may be what
    failed, and MLflow would retry it for minutes before the real error is shown."""
    with contextlib.suppress(*SEND_ERRORS), quick_http():
        mlflow.end_run(status)
