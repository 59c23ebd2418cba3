"""MLflow: where runs go, how a trained model is logged, registered and promoted, and how it is found again.

Promotion sets the `production` alias (the MLflow 3 way) and also moves the version to the
classic `Production` stage, archiving the previous one, so stage-based workflows keep working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from asr import UserError, first_line
from asr.atomic import atomic_path
from asr.requirements import model_requirements

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PRODUCTION_ALIAS = "production"
PRODUCTION_STAGE = "Production"
WER_TAG = "val_wer"  # version tag holding the dev WER that `if-better` promotion compares
# Registry errors that concurrent writers cause and a retry cures: SQLite's writer lock held past its busy
# timeout, or two processes inserting the same alias row at once.
TRANSIENT = ("database is locked", "UNIQUE constraint failed", "IntegrityError")

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrackingError(UserError):
    """An MLflow store or registry problem, with what to do about it."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def redact(uri: str) -> str:
    """The URI with its password (if any) replaced by ***: for messages, which end up in shared logs."""
    password = urllib.parse.urlsplit(uri).password
    return uri.replace(f":{password}@", ":***@", 1) if password else uri


def setup_uri() -> str:
    """Points MLflow at the tracking store (for commands that read models but log no run)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if urllib.parse.urlsplit(uri).password:  # MLflow would print "View run at <uri>", password included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return uri


def setup(experiment: str) -> str:
    """Points MLflow at the tracking store and returns the experiment id, creating the experiment if needed.

    With the default local store, artifacts go under ./mlruns next to mlflow.db.
    """
    uri = setup_uri()
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`: the run, and so its experiment, already exist
        return mlflow.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            exp_id = found.experiment_id
        else:
            location = Path("mlruns").resolve().as_uri() if uri.startswith("sqlite:") else None
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    except MlflowException as e:
        raise TrackingError(f"cannot use MLflow tracking store {redact(uri)}: {e.message.splitlines()[0]}") from None
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


# ---------------------------------------------------------------- a tracking server that is down, or goes away

PROBE_TIMEOUT = 5.0      # seconds the reachability probe waits for an answer
SEND_EVERY = 5.0         # seconds between batched sends of training metrics
RETRY_CAP = 60.0         # longest wait between sends while the server does not answer
MAX_PENDING = 100_000    # metrics kept while it does not answer; beyond that the oldest are dropped
SEND_ERRORS = (MlflowException, requests.RequestException, OSError)


class TrackingUnreachable(TrackingError):
    """The tracking server does not answer."""


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raises TrackingUnreachable unless the http(s) tracking server at `uri` answers GET /health within `timeout`
    seconds. MLflow's own client retries a dead server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, exponential
    backoff, MLFLOW_HTTP_REQUEST_TIMEOUT=120 s); one short probe before any compute makes that an immediate error.
    Any answer below HTTP 500 counts (401 from an auth proxy: MLflow's own calls say what is wrong); other stores
    (sqlite:, file:, databricks) are not probed."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    try:
        status = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).status_code
    except requests.exceptions.SSLError:
        return  # something answers; MLflow's own calls will report the certificate problem
    except requests.Timeout:
        problem = f"no answer within {timeout:g} s"
    except requests.RequestException as e:
        problem = failure(e)
    else:
        if status < 500:
            return
        problem = f"HTTP {status}"  # e.g. a proxy in front of a server that is down
    raise TrackingUnreachable(f"MLflow tracking server {redact(uri)} is unreachable ({problem}); start it "
                              f"(`asr server`), fix MLFLOW_TRACKING_URI, or train with --offline_ok True to log to "
                              f"{DEFAULT_TRACKING_URI} instead")


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


class MetricLog:
    """Training metrics, sent to the run in batches every SEND_EVERY seconds, that survive the tracking server going
    away: a failed send keeps them (up to MAX_PENDING) and training goes on; sending is retried after 2, 4, 8, ...
    up to RETRY_CAP seconds, each attempt bounded by quick_http. One warning when the server stops answering, one
    line when it is back; checkpoints are written as usual, so the run stays resumable either way. What is still
    unsent when training stops is kept in the run's folder (UNSENT), and `--resume` sends it."""

    UNSENT = "unsent_metrics.json"

    def __init__(self, run_id: str, out_dir: Path) -> None:
        self.run_id, self.unsent = run_id, out_dir / self.UNSENT
        kept = json.loads(self.unsent.read_text()) if self.unsent.is_file() else []
        self.pending: list[Metric] = [Metric(*m) for m in kept]
        self.failures = 0  # consecutive failed sends
        self.dropped = 0
        self.next_send = time.monotonic() + SEND_EVERY

    def log(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        if len(self.pending) > MAX_PENDING:
            self.dropped += len(self.pending) - MAX_PENDING
            del self.pending[:-MAX_PENDING]
        if time.monotonic() >= self.next_send:
            self.send()

    def send(self) -> bool:
        """One bounded attempt to send everything pending; True when nothing is left."""
        try:
            with quick_http():
                while self.pending:
                    MlflowClient().log_batch(self.run_id, metrics=self.pending[:1000])  # the REST API's limit
                    del self.pending[:1000]
        except SEND_ERRORS as e:
            self.failures += 1
            self.next_send = time.monotonic() + min(RETRY_CAP, 2.0 ** self.failures)
            if self.failures == 1:
                print(f"Warning: tracking server {redact(mlflow.get_tracking_uri())} does not answer ({failure(e)}); "
                      "training goes on, metrics are kept and sent when it is back", file=sys.stderr)
            return False
        self.unsent.unlink(missing_ok=True)
        if self.failures:
            lost = f" ({self.dropped} oldest dropped)" if self.dropped else ""
            print(f"tracking server {redact(mlflow.get_tracking_uri())} answers again: kept metrics sent{lost}",
                  file=sys.stderr)
        self.failures, self.dropped, self.next_send = 0, 0, time.monotonic() + SEND_EVERY
        return True

    def send_or_keep(self) -> None:
        """One bounded attempt to send; what cannot be sent is written to the run's folder for `--resume`."""
        if not self.send():
            with atomic_path(self.unsent, shared=False) as tmp:  # a kill mid-write must not lose the earlier ones
                tmp.write_text(json.dumps([[m.key, m.value, m.timestamp, m.step] for m in self.pending]))

    def close(self, attempts: int = 5) -> None:
        """Sends what is left before the model is logged, retrying after 2, 4, 8 and 16 s; if the server still does
        not answer, keeps the metrics and stops with how to finish the run later."""
        for i in range(attempts - 1):
            if self.send():
                return
            time.sleep(2.0 ** (i + 1))
        self.send_or_keep()
        if self.pending:
            raise TrackingUnreachable(f"tracking server {redact(mlflow.get_tracking_uri())} does not answer: "
                                      "training is complete and checkpointed, but the model is not logged or "
                                      f"registered; once it is back: asr train --resume {self.unsent.parent}")


def end_run(status: str) -> None:
    """Ends the active run as `status` with one bounded attempt: after a failure the tracking server may be what
    failed, and MLflow would retry it for minutes before the real error is shown."""
    with contextlib.suppress(*SEND_ERRORS), quick_http():
        mlflow.end_run(status)


def log_model(checkpoint: Path, input_example_audio: Path) -> str:
    """Logs the checkpoint as a pyfunc model (audio in, text out) in the active run; returns its model URI."""
    import pandas as pd

    from asr.pyfunc import audio_to_base64, signature

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc.py")),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(Path(__file__).parent)],
        signature=signature(),
        input_example=pd.DataFrame({"audio": [audio_to_base64(input_example_audio)]}),
        pip_requirements=model_requirements(),
    )
    return info.model_uri


def retrying(call: Callable[[], T], attempts: int = 8) -> T:
    """`call()`, retried with exponential backoff (0.1 s, doubling) while the registry error is transient."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as e:
            transient = e.error_code == "TEMPORARILY_UNAVAILABLE" or any(s in e.message for s in TRANSIENT)
            if not transient or attempt == attempts - 1:
                raise
            log.info("registry busy (%s); retry %d", e.message.splitlines()[0][:120], attempt + 1)
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def registered_version(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version this run already registered: a run killed after registering but before it could record that
    in last.pt registers again on resume, and must get the same version, not a second one."""
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(min(int(v.version) for v in found)) if found else None


def register(model_uri: str, name: str, run_id: str, dev_wer: float) -> str:
    """Registers a new version of `name` (or finds the one this run registered before) and returns its number."""
    def once() -> str:
        existing = registered_version(MlflowClient(), name, run_id)
        if existing is not None:
            return existing
        tags = {WER_TAG: f"{dev_wer:.6f}", "run_id": run_id}
        return str(mlflow.register_model(model_uri, name, tags=tags).version)
    return retrying(once)


def current_production(client: MlflowClient, name: str):
    """The version carrying the production alias, else the one in stage Production, else None."""
    try:
        return client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
    except MlflowException:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            versions = client.get_latest_versions(name, stages=[PRODUCTION_STAGE])
        except MlflowException:
            return None
    return versions[0] if versions else None


def should_promote(policy: str, dev_wer: float, current) -> bool:
    if policy == "always":
        return True
    if policy == "never":
        return False
    if current is None:
        return True
    current_wer = current.tags.get(WER_TAG)
    return current_wer is None or dev_wer < float(current_wer)


def to_production_stage(client: MlflowClient, name: str, version: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        retrying(lambda: client.transition_model_version_stage(name, version, PRODUCTION_STAGE,
                                                               archive_existing_versions=True))


def promote(name: str, version: str) -> None:
    """Alias `production` -> version, and stage Production (previous Production versions archived).

    Those are two registry writes, and the stage transition reads before it writes: concurrent promotions (two
    trainings finishing together) interleave them into an alias on one version and stage Production on others.
    So every promoter then settles the registry (the stage follows the alias)."""
    client = MlflowClient()
    retrying(lambda: client.set_registered_model_alias(name, PRODUCTION_ALIAS, version))
    to_production_stage(client, name, version)
    settle_production(client, name)


def settle_production(client: MlflowClient, name: str, rounds: int = 20) -> str:
    """Makes the `production` alias's version the only one in stage Production; returns it. Checks again after
    every repair, so whichever promoter writes last also checks last and the registry ends consistent (the last
    alias write wins). Any store, no lock needed; what it cannot do is make `if-better` atomic: two trainings
    finishing together may both beat the old version and the later one wins, whichever is better."""
    for _ in range(rounds):
        target = str(retrying(lambda: client.get_model_version_by_alias(name, PRODUCTION_ALIAS)).version)
        staged = {str(v.version) for v in retrying(lambda: client.search_model_versions(f"name='{name}'"))
                  if v.current_stage == PRODUCTION_STAGE}
        if staged == {target}:
            return target
        to_production_stage(client, name, target)
    raise TrackingError(f"{name}: the production alias kept moving under concurrent promotions; "
                        f"check the registry (alias {PRODUCTION_ALIAS}, stage {PRODUCTION_STAGE})")


@dataclass
class Promotion:
    version: str
    promoted: bool
    policy: str
    dev_wer: float
    previous: str | None = None           # the Production version before this one
    previous_wer: float | None = None

    def describe(self) -> str:
        verdict = "promoted to Production (alias production)" if self.promoted else "not promoted"
        why = f"policy {self.policy}"
        if self.previous is not None and self.previous_wer is not None:
            why += f"; dev WER {self.dev_wer:.3f} vs version {self.previous}'s {self.previous_wer:.3f}"
        elif self.previous is None:
            why += "; no Production version yet"
        return f"version {self.version} {verdict} ({why})"


def register_and_promote(model_uri: str, name: str, run_id: str, dev_wer: float, policy: str) -> Promotion:
    current = current_production(MlflowClient(), name)
    version = register(model_uri, name, run_id, dev_wer)
    if current is not None and str(current.version) == version:  # promoted by this run before it was killed:
        current = None                                        # finish the job (the stage may still lag)
        promoted = policy != "never"
    else:
        promoted = should_promote(policy, dev_wer, current)
    if promoted:
        promote(name, version)
    previous_wer = float(current.tags[WER_TAG]) if current is not None and WER_TAG in current.tags else None
    return Promotion(version, promoted, policy, dev_wer, str(current.version) if current else None, previous_wer)


def model_uri(name: str, stage: str = PRODUCTION_STAGE, alias: str = "", version: str = "") -> str:
    """models:/ URI for a registered model: an explicit version wins over an alias, an alias over a stage."""
    if version:
        return f"models:/{name}/{version}"
    if alias:
        return f"models:/{name}@{alias}"
    return f"models:/{name}/{stage}"


def load_model(uri: str):
    """Loads a pyfunc model, turning registry misses into a one-line error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return mlflow.pyfunc.load_model(uri)
    except MlflowException as e:
        raise TrackingError(f"cannot load {uri} from {redact(tracking_uri())}: {e.message.splitlines()[0]} "
                            "(train and register one with `asr train`)") from None


def load_transcriber(uri: str, decode=None):
    """An `asr.transcribe.Transcriber` from wherever a model lives: a checkpoint file, a training output folder
    (OUTPUT_DIR/RUN_ID), a local MLflow model folder, a run id, runs:/ or models:/ URIs."""
    import re

    from asr.transcribe import Transcriber

    path = Path(uri)
    if path.is_file():
        return Transcriber.from_checkpoint(path, decode)
    if path.is_dir() and not (path / "MLmodel").is_file():
        for name in ("model.pt", "best.pt", "last.pt"):
            if (path / name).is_file():
                return Transcriber.from_checkpoint(path / name, decode)
        raise TrackingError(f"{uri}: no model.pt, best.pt or last.pt in this folder")
    if re.fullmatch(r"[0-9a-f]{32}", uri):
        uri = f"runs:/{uri}/model"
    if not (path.is_dir() or uri.startswith(("models:/", "runs:/", "mlflow-artifacts:", "file:"))):
        raise TrackingError(f"{uri}: not a checkpoint, a model folder, a run id, or a runs:/ or models:/ URI")
    transcriber = load_model(uri).unwrap_python_model().transcriber
    if decode is not None:
        transcriber.configure(decode)
    return transcriber
