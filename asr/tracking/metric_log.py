"""Training metrics that survive a tracking server going away: batched, kept while it does not answer, and
written to the run's folder for `--resume` when it never comes back."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from asr import redact
from asr.atomic import atomic_path
from asr.tracking.store import SEND_ERRORS, TrackingUnreachable, failure, quick_http

SEND_EVERY = 5.0         # seconds between batched sends of training metrics
RETRY_CAP = 60.0         # longest wait between sends while the server does not answer
MAX_PENDING = 100_000    # metrics kept while it does not answer; beyond that the oldest are dropped


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
