# PROVISIONAL: replaced by the real recognizer at integration
"""Streaming recognition: audio arrives in chunks of any length, partial text comes back after each chunk, and
segments are finalized at pauses (endpoints) or when they grow too long.

This version is simple: it keeps the open segment's audio and re-runs the acoustic model over all of it for each
partial (greedy decoding); a segment ends after `endpoint_ms` of low-energy audio following speech, and its final
text is `Transcriber.transcribe` of the segment (the model's own decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asr import UserError
from asr.audio import MIN_SECONDS
from asr.decoding import greedy_decode

FRAME_MS = 10.0       # energy is measured per frame of this length
QUIET_RATIO = 0.05    # a frame is quiet when its RMS is under this fraction of the loudest frame heard so far
QUIET_FLOOR = 1e-3    # ... or under this absolute RMS (about -60 dBFS)


class NotStreamable(UserError):
    """A model that cannot be run as a stream."""


@dataclass(frozen=True)
class Segment:
    text: str      # final text
    start: float   # seconds from the start of the stream
    end: float


@dataclass(frozen=True)
class StreamUpdate:
    partial: str                 # text of the open segment so far ("" when none)
    finals: tuple[Segment, ...]  # segments finalized by this call, in order


class StreamingRecognizer:
    """One stream's state over a shared `asr.transcribe.Transcriber` (weights and LM are not copied: many
    recognizers may share one transcriber, each holding only its own stream's audio)."""

    def __init__(self, transcriber, *, endpoint_ms: float = 800.0, max_segment_s: float = 30.0):
        if endpoint_ms <= 0 or max_segment_s <= 0:
            raise UserError(f"endpoint_ms ({endpoint_ms:g}) and max_segment_s ({max_segment_s:g}) must be positive")
        if not hasattr(transcriber, "emissions"):
            raise NotStreamable(f"{type(transcriber).__name__} has no acoustic model to stream")
        self.transcriber = transcriber
        self.endpoint_ms = endpoint_ms
        self.max_segment_s = max_segment_s
        self.frame = max(1, int(self.sample_rate * FRAME_MS / 1000))
        self.reset()

    @property
    def sample_rate(self) -> int:
        """Samples given to `accept` are mono float32 at this rate (Hz)."""
        return self.transcriber.sample_rate

    def reset(self) -> None:
        """Forgets the stream: the next `accept` starts a new one at time 0."""
        self._audio: list[np.ndarray] = []           # the open segment's samples, in frames
        self._size = 0                               # how many
        self._start = 0                              # its first sample, counted from the start of the stream
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet a whole energy frame
        self._speech = False                         # whether the open segment holds a loud frame
        self._quiet_run = 0                          # trailing quiet samples of the open segment
        self._peak = 0.0                             # loudest frame RMS so far
        self._partial = ""

    def accept(self, samples: np.ndarray | torch.Tensor) -> StreamUpdate:
        """Adds `samples` (1-D, any length, including 0) to the stream; returns the open segment's partial text and
        the segments an endpoint closed. Raises UserError for samples that are not 1-D or not finite."""
        chunk = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
        if chunk.ndim != 1:
            raise UserError(f"samples must be 1-D (mono), got shape {tuple(chunk.shape)}")
        chunk = chunk.astype(np.float32, copy=False)
        if not np.isfinite(chunk).all():
            raise UserError("samples hold NaN or infinite values")
        if chunk.size == 0:
            return StreamUpdate(self._partial, ())
        finals = []
        data = np.concatenate([self._pending, chunk])
        whole = data.size // self.frame * self.frame
        self._pending = data[whole:]
        for frame in data[:whole].reshape(-1, self.frame):
            self._add_frame(frame, finals)
        self._partial = self._greedy(np.concatenate(self._audio)) if self._speech else ""
        return StreamUpdate(self._partial, tuple(finals))

    def finish(self) -> StreamUpdate:
        """Ends the stream: finalizes the open segment (the samples short of a frame included); call `reset` to
        start another stream."""
        self._audio.append(self._pending)
        self._size += self._pending.size
        self._pending = np.zeros(0, dtype=np.float32)
        finals: list[Segment] = []
        self._close(finals)
        self._partial = ""
        return StreamUpdate("", tuple(finals))

    def _add_frame(self, frame: np.ndarray, finals: list[Segment]) -> None:
        rms = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2)))
        self._peak = max(self._peak, rms)
        quiet = rms < max(QUIET_FLOOR, QUIET_RATIO * self._peak)
        self._audio.append(frame)
        self._size += frame.size
        self._quiet_run = self._quiet_run + frame.size if quiet else 0
        self._speech = self._speech or not quiet
        endpoint = self._quiet_run >= self.endpoint_ms / 1000 * self.sample_rate
        if self._speech and (endpoint or self._size >= self.max_segment_s * self.sample_rate):
            self._close(finals)
        elif not self._speech and endpoint:  # silence alone: nothing to say; drop its oldest frame
            self._start += self._audio[0].size
            self._size -= self._audio.pop(0).size

    def _close(self, finals: list[Segment]) -> None:
        """Finalizes the open segment (adding it to `finals` when it says something) and opens the next one."""
        if self._speech and self._size >= MIN_SECONDS * self.sample_rate:
            text = self.transcriber.transcribe([torch.from_numpy(np.concatenate(self._audio))])[0]
            if text:
                rate = self.sample_rate
                finals.append(Segment(text, self._start / rate, (self._start + self._size) / rate))
        self._start += self._size
        self._audio, self._size = [], 0
        self._speech = False
        self._quiet_run = 0

    def _greedy(self, audio: np.ndarray) -> str:
        if audio.size < MIN_SECONDS * self.sample_rate:
            return ""
        emissions = self.transcriber.emissions([torch.from_numpy(audio)])[0]
        texts = [greedy_decode(lp[None], torch.tensor([lp.shape[0]]), self.transcriber.text.vocabulary)[0]
                 for lp in emissions]
        return " ".join(t for t in texts if t)
