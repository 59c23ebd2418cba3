"""How benchmark numbers are taken and kept: each measurement in a fresh process, the machine named, and each
benchmark's section of BENCHMARKS.md replaced on its own."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import re
import resource
import sys
from pathlib import Path

from asr.atomic import atomic_path


def _status_mb(field: str) -> float | None:
    """A memory figure of this process from Linux's /proc/self/status (e.g. VmHWM, RssAnon), in MB; None where
    there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: Linux's VmHWM, which starts afresh when a program starts, where
    ru_maxrss also counts the memory of the parent that forked it (so a spawned measurement of a big parent would
    report the parent's size); ru_maxrss where there is no /proc."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def rss_anon_mb() -> float:
    """This process's anonymous resident memory now, MB (Linux RssAnon: the heap, not mapped files; 0 elsewhere)."""
    return _status_mb("RssAnon") or 0.0


def in_fresh_process(fn, *args):
    """fn(*args) in a new interpreter (spawned): thread settings, allocator state and peak memory are its own."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def write_section(path: Path, name: str, body: str) -> None:
    """Replaces (or appends) one benchmark's section of BENCHMARKS.md, leaving the others alone."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nNumbers written by the project's own scripts.\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with atomic_path(path) as tmp:  # a crash mid-write must not cost the other sections' numbers
        tmp.write_text(text)
