"""The Model Registry: registering a trained model's version and promoting it to Production.

Promotion sets the `production` alias (the MLflow 3 way) and also moves the version to the
classic `Production` stage, archiving the previous one, so stage-based workflows keep working.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from asr.tracking.store import TrackingError

PRODUCTION_ALIAS = "production"
PRODUCTION_STAGE = "Production"
WER_TAG = "val_wer"  # version tag holding the dev WER that `if-better` promotion compares
# Registry errors that concurrent writers cause and a retry cures: SQLite's writer lock held past its busy
# timeout, or two processes inserting the same alias row at once.
TRANSIENT = ("database is locked", "UNIQUE constraint failed", "IntegrityError")

log = logging.getLogger(__name__)
T = TypeVar("T")


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
