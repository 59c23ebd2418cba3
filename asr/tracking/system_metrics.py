"""CPU, memory, disk, network and GPU use during training, logged by MLflow's own system-metrics monitor as the
run's `system/...` metrics (the run page's "System metrics")."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
from typing import TYPE_CHECKING

from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

from asr.tracking.store import SEND_ERRORS, quick_http

if TYPE_CHECKING:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

# Seconds between samples, unless MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise: MLflow's default, fine
# enough for runs of minutes, and one request per interval on a shared tracking server for runs of days.
SAMPLING_INTERVAL = 10.0
STOP_TIMEOUT = 15.0  # seconds `stop` waits for the monitor's thread to finish


class SystemMetrics:
    """MLflow's SystemMetricsMonitor for one run, plus what it leaves out: it publishes a sample only at the end of
    each full interval and drops the last, partial one when stopped, so a run shorter than the interval would
    show none; `stop` publishes that last sample. MLflow needs psutil (and nvidia-ml-py for NVIDIA GPUs); without
    psutil, one warning and training goes on unmonitored."""

    def __init__(self, run_id: str, resumed: bool) -> None:
        self.monitor: SystemMetricsMonitor | None = None
        if importlib.util.find_spec("psutil") is None:
            print("Warning: system metrics are not logged: psutil is not installed (pip install psutil, or train "
                  "with --system_metrics False)", file=sys.stderr)
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        interval = MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or SAMPLING_INTERVAL
        # its INFO lines (started, no GPU, stopping, stopped) are not news, and would break the one-line errors
        logging.getLogger(SystemMetricsMonitor.__module__).setLevel(logging.WARNING)
        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resumed)
        self.monitor.start()

    def stop(self) -> None:
        """Stops sampling and publishes the last sample. Bounded: after a failure the tracking server may be what
        failed, and the monitor's thread may be inside MLflow's minutes of retries; it is then left behind (a
        daemon thread) without its last sample."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        with quick_http():
            stopping = threading.Thread(target=monitor.finish, daemon=True, name="stop-system-metrics")
            stopping.start()
            stopping.join(STOP_TIMEOUT)
            if stopping.is_alive():
                return
            with contextlib.suppress(*SEND_ERRORS):
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
