"""The Model Registry: registering a trained model's version and promoting it to Production.

Promotion sets the `production` alias (the MLflow 3 way) and also moves the version to the
classic `Production` stage, archiving the previous one, so stage-based workflows keep working.

`if-better` promotion is made atomic without a lock (a registry has no transactions): a promoter that decides to
promote first tags its version a contender, then moves the alias, then re-checks; a worse contender that moved
the alias last hands it back to the best one. See settle_contest.

Dev WERs compare only between versions scored on the same dev set: each version carries the digest of its dev
split (DEV_DIGEST_TAG), and `if-better` neither beats nor yields to a version scored on another one.
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

from asr import first_line, not_found, redact
from asr.tracking.store import TrackingError

PRODUCTION_ALIAS = "production"
PRODUCTION_STAGE = "Production"
WER_TAG = "val_wer"  # version tag holding the dev WER (of the model's own decoder) that `if-better` compares
# Version tag: split_digest (asr.data.dataset) of the dev split WER_TAG was measured on; two versions' dev WERs compare
# only when it is equal. Versions registered before it existed (whose val_wer may be greedy) or by hand have none.
DEV_DIGEST_TAG = "dev_digest"
DECODER_TAG = "decoder"  # version tag saying how the version decodes, e.g. "beam+lm(order 3)" or "greedy"
# Version tag an `if-better` promoter sets (to the time, in seconds since the epoch) before it moves the alias: the
# contenders of one round of concurrent promotions, so the last one to move can hand Production to the best of them.
CONTENDER_TAG = "production_contender"
CONTENDER_SECONDS = 3600.0  # how long a claim counts: longer than any promotion takes, even one retrying for a while
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


def register(model_uri: str, name: str, run_id: str, dev_wer: float, dev_digest: str,
             tags: dict[str, str] | None = None) -> str:
    """Registers a new version of `name` (or finds the one this run registered before), with `tags` besides its
    dev WER, the digest of the dev split it was measured on, and its run id; returns its number."""
    def once() -> str:
        existing = registered_version(MlflowClient(), name, run_id)
        if existing is not None:
            return existing
        all_tags = {**(tags or {}), WER_TAG: f"{dev_wer:.6f}", DEV_DIGEST_TAG: dev_digest, "run_id": run_id}
        return str(mlflow.register_model(model_uri, name, tags=all_tags).version)
    return retrying(once)


def set_version_description(name: str, version: str, text: str) -> None:
    """Sets version `version` of `name`'s description (the registry UI renders it as Markdown). It replaces the
    description, so a resumed run that sets it again leaves one. Raises TrackingError when the registry refuses."""
    client = MlflowClient()
    try:
        retrying(lambda: client.update_model_version(name, version, description=text))
    except MlflowException as e:
        raise TrackingError(f"cannot set the description of {name} version {version} in the model registry "
                            f"({redact(mlflow.get_registry_uri())}): {first_line(e)}") from None


def current_production(client: MlflowClient, name: str):
    """The version carrying the production alias, else the one in stage Production, else None (no such model or
    no Production version). Any other registry error raises TrackingError: read as "no Production version", a
    store error would let `if-better` promote whatever it is comparing."""
    try:
        return retrying(lambda: client.get_model_version_by_alias(name, PRODUCTION_ALIAS))
    except MlflowException as e:
        if not not_found(e):
            raise unreadable(name, e) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            versions = retrying(lambda: client.get_latest_versions(name, stages=[PRODUCTION_STAGE]))
        except MlflowException as e:
            if not_found(e):
                return None
            raise unreadable(name, e) from None
    return versions[0] if versions else None


def unreadable(name: str, e: MlflowException) -> TrackingError:
    return TrackingError(f"cannot read {name}'s Production version from the model registry "
                         f"({redact(mlflow.get_registry_uri())}): {first_line(e)}; nothing was registered "
                         "or promoted")


def dev_wer_of(version) -> float:
    """A version's dev WER from its tag; a version without one (registered by hand) counts as the worst."""
    return float(version.tags.get(WER_TAG, "inf"))


def dev_digest_of(version) -> str:
    """The digest of the dev split a version's dev WER was measured on; '' for a version without one."""
    return version.tags.get(DEV_DIGEST_TAG, "")


def scored_alike(mine, versions: list) -> list:
    """Those of `versions` scored on the same dev set as `mine` (equal, non-empty dev_digest): only their dev WERs
    compare with mine's. A version without a digest compares with none."""
    digest = dev_digest_of(mine)
    return [v for v in versions if digest and dev_digest_of(v) == digest]


def best_of(versions: list):
    """The lowest dev WER; of equal ones the earliest version, so a new version must be strictly better."""
    return min(versions, key=lambda v: (dev_wer_of(v), int(v.version)))


def contenders(client: MlflowClient, name: str) -> list:
    """Versions an `if-better` promoter claimed Production for in the last CONTENDER_SECONDS."""
    now = time.time()
    found = retrying(lambda: client.search_model_versions(f"name='{name}'"))
    return [v for v in found if CONTENDER_TAG in v.tags and now - float(v.tags[CONTENDER_TAG]) < CONTENDER_SECONDS]


def should_promote(policy: str, mine, production, rivals: list) -> bool:
    """`if-better`: this version (`mine`) was scored on the same dev set as the `production` version (None: there
    is none) and is strictly better than it and every recent contender of that dev set (`rivals`, which may
    include `mine` itself when a killed run resumes). A Production version scored elsewhere may be better: it
    stays. Contenders scored elsewhere do not count."""
    if policy == "always":
        return True
    if policy == "never":
        return False
    if production is not None and not scored_alike(mine, [production]):
        return False
    others = [production, *rivals] if production is not None else rivals
    return best_of([mine, *scored_alike(mine, others)]).version == mine.version


def to_production_stage(client: MlflowClient, name: str, version: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        retrying(lambda: client.transition_model_version_stage(name, version, PRODUCTION_STAGE,
                                                               archive_existing_versions=True))


def promote(name: str, version: str, contest: bool = False) -> str:
    """Alias `production` -> version, and stage Production (previous Production versions archived); returns the
    Production version after that, which is `version` unless `contest` (an `if-better` promotion) made it yield.

    Those are two registry writes, and the stage transition reads before it writes: concurrent promotions (two
    trainings finishing together) interleave them into an alias on one version and stage Production on others.
    So every promoter then settles the registry (the stage follows the alias)."""
    client = MlflowClient()
    retrying(lambda: client.set_registered_model_alias(name, PRODUCTION_ALIAS, version))
    if contest:
        settle_contest(client, name)
    return settle_production(client, name)


def settle_contest(client: MlflowClient, name: str, rounds: int = 20) -> str:
    """Moves the `production` alias to the best of its version and the recent contenders scored on the same dev
    set; returns that version.

    Why this makes `if-better` atomic: every contender is tagged before its promoter moves the alias, and every
    promoter re-reads after each alias write it makes. So whoever writes the alias last then reads every contender
    that ever moved it, and leaves it on the best of them, whatever the interleaving (two trainings that both beat
    the old version, the worse one moving last: it hands Production back to the better one). The alias only moves
    to a version of its version's dev set, so it never lands on a version whose dev WER was compared with nothing
    (and two settlers cannot hand it back and forth between dev sets)."""
    for _ in range(rounds):
        target = retrying(lambda: client.get_model_version_by_alias(name, PRODUCTION_ALIAS))
        winner = best_of([target, *scored_alike(target, contenders(client, name))])
        if winner.version == target.version:
            return str(target.version)
        retrying(lambda w=winner: client.set_registered_model_alias(name, PRODUCTION_ALIAS, str(w.version)))
    raise TrackingError(f"{name}: the production alias kept moving under concurrent promotions; "
                        f"check the registry (alias {PRODUCTION_ALIAS})")


def end_contests(client: MlflowClient, name: str) -> None:
    """Clears the contender tags: after a promotion by policy `always`, the next `if-better` one compares with the
    version that policy chose, not with an earlier, better contender."""
    for v in contenders(client, name):
        retrying(lambda v=v: client.delete_model_version_tag(name, str(v.version), CONTENDER_TAG))


def settle_production(client: MlflowClient, name: str, rounds: int = 20) -> str:
    """Makes the `production` alias's version the only one in stage Production; returns it. Checks again after
    every repair, so whichever promoter writes last also checks last and the registry ends consistent (the last
    alias write wins). Any store, no lock needed; `if-better` settles the alias first (settle_contest)."""
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
    name: str = ""                        # the registered model
    dev_digest: str = ""                  # of the dev split dev_wer was measured on
    previous_digest: str | None = None    # the previous version's ('' when it has none)

    def describe(self) -> str:
        """The one line saying what happened to the version and why, e.g. `version 4 not promoted (policy
        if-better; dev WER 0.412 vs version 3's 0.398)`, or `version 3 is already in Production ...`."""
        if self.promoted and self.previous == self.version:
            return f"version {self.version} is already in Production (alias production); nothing to promote"
        verdict = "promoted to Production (alias production)" if self.promoted else "not promoted"
        return f"version {self.version} {verdict} (policy {self.policy}{self.reason()})"

    def reason(self) -> str:
        """What the dev WER was compared with, or why it could not be: '' or '; ...'."""
        if self.previous is None:
            return "; no Production version yet"
        if self.previous_digest is not None and not (self.dev_digest and self.previous_digest == self.dev_digest):
            return f"; {self.scored_elsewhere()}"
        if self.previous_wer is None:
            return ""
        return f"; dev WER {self.dev_wer:.3f} vs version {self.previous}'s {self.previous_wer:.3f}"

    def scored_elsewhere(self) -> str:
        """Why the previous version's dev WER was not compared, and (not promoted by `if-better`) what to do."""
        if self.previous_digest:
            why = (f"Production version {self.previous} was scored on another dev set (dev_digest "
                   f"{self.previous_digest}, this version's {self.dev_digest or 'none'}), so their dev WERs do "
                   "not compare")
        else:
            why = (f"Production version {self.previous} has no dev_digest (registered before versions recorded "
                   "their dev set, or by hand), so its dev WER does not compare with this version's")
        if self.policy == "if-better" and not self.promoted:
            why += (f"; promote it by hand with asr promote --registered_model {self.name} --model_version "
                    f"{self.version}, or train with --promote always")
        return why


def register_and_promote(model_uri: str, name: str, run_id: str, dev_wer: float, dev_digest: str, policy: str,
                         decided: Callable[[], None] | None = None, tags: dict[str, str] | None = None) -> Promotion:
    """Registers the model, its dev WER and the digest of the dev split it was measured on (split_digest), and
    promotes it as `policy` says. The Production version is read before registering, so a store that cannot
    answer fails this step (TrackingError) with the registry as it was.

    `if-better` decides against the Production version and the recent contenders scored on the same dev set,
    tags this version a contender, moves the alias and settles (settle_contest), so concurrent promoters leave the
    best of them in Production. A Production version scored on another dev set (or on an unknown one) is kept.
    `decided`, if given, is called between the decision and the move (tests use it to order concurrent ones)."""
    client = MlflowClient()
    current = current_production(client, name)
    version = register(model_uri, name, run_id, dev_wer, dev_digest, tags)
    mine = retrying(lambda: client.get_model_version(name, version))
    resumed = current is not None and str(current.version) == version  # promoted by this run before it was killed
    if resumed:
        current = None  # finish the job (the stage may still lag)
    rivals = contenders(client, name) if policy == "if-better" else []
    promoted = policy != "never" if resumed else should_promote(policy, mine, current, rivals)
    if decided is not None:
        decided()
    if promoted and policy == "if-better":
        retrying(lambda: client.set_model_version_tag(name, version, CONTENDER_TAG, f"{time.time():.3f}"))
        winner = promote(name, version, contest=True)
        if winner != version:  # a better contender moved the alias in the meantime: this version yielded to it
            promoted, current = False, retrying(lambda: client.get_model_version(name, winner))
    elif promoted:
        promote(name, version)
        end_contests(client, name)
    if current is None:
        return Promotion(version, promoted, policy, dev_wer, name=name, dev_digest=dev_digest_of(mine))
    previous_wer = dev_wer_of(current) if WER_TAG in current.tags else None
    return Promotion(version, promoted, policy, dev_wer, str(current.version), previous_wer, name,
                     dev_digest_of(mine), dev_digest_of(current))


def promote_by_hand(name: str, version: str) -> Promotion:
    """Promotes `version` of `name` to Production whatever its dev WER (`asr promote`), as policy `always` does:
    alias and stage move together and recent contenders are cleared. Raises TrackingError when the registry has no
    such version."""
    client = MlflowClient()
    try:
        mine = retrying(lambda: client.get_model_version(name, version))
    except MlflowException as e:
        if not_found(e):
            raise TrackingError(_no_version(client, name, version)) from None
        raise unreadable(name, e) from None
    current = current_production(client, name)
    promote(name, version)
    end_contests(client, name)
    previous = str(current.version) if current is not None else None
    return Promotion(version, True, "by hand", dev_wer_of(mine), previous,
                     dev_wer_of(current) if current is not None and WER_TAG in current.tags else None, name,
                     dev_digest_of(mine), dev_digest_of(current) if current is not None else None)


def _no_version(client: MlflowClient, name: str, version: str) -> str:
    """One line on why `name` has no `version`: no such registered model (and what to do), or which versions it
    has. Raises TrackingError when the registry cannot be read."""
    registry = redact(mlflow.get_registry_uri())
    try:
        retrying(lambda: client.get_registered_model(name))
    except MlflowException as e:
        if not_found(e):
            return (f"there is no registered model {name} in the model registry ({registry}); train and register "
                    "one with asr train")
        raise unreadable(name, e) from None
    have = sorted(int(v.version) for v in retrying(lambda: client.search_model_versions(f"name='{name}'")))
    return (f"{name} has no version {version} in the model registry ({registry}); it has versions "
            f"{', '.join(map(str, have)) or 'none'}")


def model_uri(name: str, stage: str = PRODUCTION_STAGE, alias: str = "", version: str = "") -> str:
    """models:/ URI for a registered model: an explicit version wins over an alias, an alias over a stage."""
    if version:
        return f"models:/{name}/{version}"
    if alias:
        return f"models:/{name}@{alias}"
    return f"models:/{name}/{stage}"
