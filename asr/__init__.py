"""DeepSpeech2-style speech recognition with its whole life cycle tracked in MLflow.

`asr.load(ref)` is the front door: a Transcriber (waveforms -> text) from a checkpoint, a training output folder,
a run id, or a runs:/ or models:/ URI. The top-level modules are the model side, what a served model imports;
the subpackages are the machinery around it (data, training, evaluation, tracking, bench).
"""

from __future__ import annotations

import urllib.parse


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries bury the point in paragraphs), or its type name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class UserError(Exception):
    """A problem the user can fix (bad input, missing data or model): the CLI prints it as one line, no traceback."""


def redact(uri: str) -> str:
    """The URI with its password (if any) replaced by ***: for messages, which end up in shared logs."""
    password = urllib.parse.urlsplit(uri).password
    return uri.replace(f":{password}@", ":***@", 1) if password else uri


def load(ref: str, decode=None):
    """A `asr.transcribe.Transcriber` for the model `ref` names, decoding with `decode` (an
    `asr.config.DecodeConfig`; default: the model's own decoder, greedy for a model trained without an LM). See
    `asr.loading.load_transcriber` for the forms of `ref` and the errors raised."""
    from asr.loading import load_transcriber

    return load_transcriber(ref, decode)


def not_found(e: Exception) -> bool:
    """Whether an MlflowException is the tracking store's answer for a model, version, alias or run that does not
    exist, as opposed to a store that failed (unreachable, locked, refused)."""
    code, message = getattr(e, "error_code", ""), getattr(e, "message", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in message)
