"""LibriSpeech utterance ids (SPEAKER-CHAPTER-UTTERANCE), checked without reading anything: settings refuse a bad
one before a command loads a model or touches a store."""

from __future__ import annotations

import re

FILE_ID = re.compile(r"^\d+-\d+-\d+$")


def file_id_problem(file_id: str) -> str | None:
    """Why `file_id` is not an utterance id (it must be digits only, so it can never reach outside a dataset)."""
    if FILE_ID.fullmatch(file_id or ""):
        return None
    return "invalid file id: expected SPEAKER-CHAPTER-UTTERANCE digits, e.g. 1089-134686-0000"
