# PROVISIONAL: replaced by the real recognizer at integration
"""Streaming recognition: audio fed in pieces of any length, partial text of the open segment after each piece,
and final segments cut where the speaker pauses (endpointing on a run of quiet audio).

This version re-transcribes the open segment's audio with the offline model for its partials and its final text:
simple and exactly the offline transcript of each segment, at a cost that grows with the segment's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asr import UserError
from asr.transcribe import Transcriber

FRAME_S = 0.01          # endpointing looks at the energy of 10 ms frames
QUIET_FLOOR = 1e-3      # RMS below this is quiet, whatever the segment's loudness
QUIET_RATIO = 0.05      # and so is RMS below this fraction of the segment's loudest frame
PARTIAL_EVERY_S = 0.3   # partials are recomputed after at least this much new audio
MIN_PARTIAL_S = 0.1     # no partial for less audio than this


class NotStreamable(UserError):
    """A model that cannot transcribe a stream."""


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
    """Feeds mono float32 audio at `sample_rate`, in pieces of any length, to `transcriber`; a segment ends after
    `endpoint_ms` of quiet following speech, or once it is `max_segment_s` long. Raises NotStreamable for a
    transcriber that cannot stream (none, in this version)."""

    def __init__(self, transcriber: Transcriber, *, endpoint_ms: float = 800.0, max_segment_s: float = 30.0):
        if endpoint_ms <= 0 or max_segment_s <= 0:
            raise UserError(f"endpoint_ms ({endpoint_ms:g}) and max_segment_s ({max_segment_s:g}) must be positive")
        self.transcriber = transcriber
        self.endpoint_ms = endpoint_ms
        self.max_segment_s = max_segment_s
        self.frame = max(1, round(FRAME_S * self.sample_rate))
        self.reset()

    @property
    def sample_rate(self) -> int:
        return self.transcriber.sample_rate

    def reset(self) -> None:
        """Forgets everything: the next sample is at time 0 of a new stream."""
        self._audio = np.zeros(0, np.float32)  # the open segment's samples
        self._offset = 0                       # stream sample index of its first sample
        self._scanned = 0                      # its samples whose frames were looked at
        self._peak = 0.0                       # loudest frame RMS in it
        self._speech: tuple[int, int] | None = None  # first and last speech frame ends (segment samples)
        self._partial, self._partial_at = "", 0

    def accept(self, samples: np.ndarray | torch.Tensor) -> StreamUpdate:
        """Takes the next samples (mono float32 at `sample_rate`, any length, 0 included)."""
        data = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
        self._audio = np.concatenate([self._audio, data.astype(np.float32, copy=False).reshape(-1)])
        finals = []
        while (cut := self._endpoint()) is not None:
            if (seg := self._close(cut)) is not None:
                finals.append(seg)
        return StreamUpdate(self._update_partial(), tuple(finals))

    def finish(self) -> StreamUpdate:
        """End of the stream: the open segment is finalized. Call reset() before feeding another stream."""
        seg = self._close(len(self._audio))
        return StreamUpdate("", (seg,) if seg is not None else ())

    def _endpoint(self) -> int | None:
        """Where the open segment ends (its sample count), scanning the frames not looked at yet, or None."""
        quiet_frames = max(1, round(self.endpoint_ms / 1000 / FRAME_S))
        limit = int(self.max_segment_s * self.sample_rate)
        while self._scanned + self.frame <= len(self._audio):
            start = self._scanned
            self._scanned += self.frame
            rms = float(np.sqrt(np.mean(np.square(self._audio[start:self._scanned], dtype=np.float64))))
            self._peak = max(self._peak, rms)
            if rms >= max(QUIET_FLOOR, QUIET_RATIO * self._peak):
                self._speech = (self._speech[0] if self._speech else start, self._scanned)
            if self._speech and self._scanned - self._speech[1] >= quiet_frames * self.frame:
                return self._scanned
            if self._scanned >= limit:
                return self._scanned
        return None

    def _close(self, cut: int) -> Segment | None:
        """Finalizes the first `cut` samples of the open segment (None when they hold no speech); the rest opens the
        next one."""
        audio, speech, rate = self._audio[:cut], self._speech, self.sample_rate
        seg = None
        if speech is not None and cut >= 0.02 * rate:
            text = self.transcriber.transcribe([torch.from_numpy(audio.copy())])[0]
            seg = Segment(text, (self._offset + speech[0]) / rate, (self._offset + speech[1]) / rate)
        rest, offset = self._audio[cut:], self._offset + cut
        self.reset()
        self._audio, self._offset = rest, offset
        return seg

    def _update_partial(self) -> str:
        n = len(self._audio)
        if self._speech is None or n < MIN_PARTIAL_S * self.sample_rate:
            self._partial, self._partial_at = "", 0
        elif n - self._partial_at >= PARTIAL_EVERY_S * self.sample_rate:
            self._partial = self.transcriber.transcribe([torch.from_numpy(self._audio.copy())])[0]
            self._partial_at = n
        return self._partial
