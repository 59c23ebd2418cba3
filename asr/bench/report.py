"""How benchmark numbers are taken and kept: each measurement in a fresh process, the machine named, and each
benchmark's section of BENCHMARKS.md replaced on its own."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import re
from pathlib import Path

from asr.atomic import atomic_path


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
