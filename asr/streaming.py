"""Live transcription: audio fed in chunks of any size, partial text as it comes, final text per segment.

`StreamingRecognizer(asr.load(ref))` wraps the Transcriber of a streaming model (trained with `--streaming`:
unidirectional GRUs, a look-ahead of N frames, causal features). It carries everything between chunks: the samples
not yet forming a feature frame, the convolutions' context, the GRUs' hidden states and the look-ahead's frames, so
its per-frame log-probabilities equal the offline model's on the whole audio (asr.model.SpeechModel.forward on
FeatureExtractor features; tested to 1e-4), whatever the chunk sizes. Latency (`latency_seconds`, besides the chunk
size and compute): output frame t (centred at t * time_stride * hop) is out once the audio reaches feature frame
time_stride * (t + R + lookahead) + 1 (R = 2 per residual CNN block) and that frame's half window n_fft / 2: with
the default shape (time stride 3, 1 CNN block, look-ahead 2, hop 10 ms, n_fft 512) 130 ms + 16 ms = 146 ms.

Endpointing: the open segment ends after `endpoint_ms` of blank output frames (argmax = blank) that follow some
non-blank output, or when it reaches `max_segment_s`. Its final text comes from the model's own decoder (beam search
+ LM when the model carries one, `Transcriber.decoder`), the partial from greedy decoding of the open segment. The
recurrent state is not reset at an endpoint (the log-probabilities stay those of the whole stream); only the
hypothesis is cut. Memory stays bounded over any stream length: only the open segment's log-probabilities are kept
(leading blank frames are dropped beyond `endpoint_ms`), and the other buffers hold a few frames each.

A bidirectional model (the default) cannot stream exactly: it runs in "segment" mode instead (see
StreamingRecognizer), re-running the offline model on the open segment's audio every `partial_ms`, so that the
existing models also work live, at a cost per partial that grows with the segment's length (bounded by
max_segment_s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from asr import UserError
from asr.decoding import greedy_decode
from asr.features import FeatureExtractor
from asr.model import SpeechModel, StreamState, conv_output_length
from asr.precision import autocast
from asr.text import BLANK


class NotStreamable(UserError):
    """A model that cannot transcribe live, with why in one line."""


class StreamError(UserError):
    """Audio a stream cannot take (not mono, or fed after `finish` without `reset`)."""


@dataclass(frozen=True)
class Segment:
    text: str      # final text (the model's own decoder)
    start: float   # seconds from the start of the stream: the segment's first non-blank output frame
    end: float     # seconds: the end of its last non-blank output frame (at most the audio's end)


@dataclass(frozen=True)
class StreamUpdate:
    partial: str                 # greedy text of the open segment so far ("" when none)
    finals: tuple[Segment, ...]  # segments finalized by this call, in order


class FeatureStream:
    """Samples in pieces -> the feature frames `FeatureExtractor` computes on the whole audio, as soon as they are
    complete. The STFT is centered with reflect padding: the front padding needs the first n_fft/2 + 1 samples,
    the end padding (the last frames) comes at `finish`. Frames are raw (causal) MFCCs (n_mfcc, k)."""

    def __init__(self, features: FeatureExtractor):
        self.mfcc = features.uncentered()
        self.hop, self.n_fft, self.pad = features.hop, features.n_fft, features.n_fft // 2
        self.n_mfcc = features.mfcc.n_mfcc
        self.reset()

    def reset(self) -> None:
        self.buffer = torch.zeros(0)  # padded signal from the next frame's first sample on
        self.head = torch.zeros(0)    # the first samples, until there are enough to reflect-pad the start
        self.last = torch.zeros(0)    # the last pad + 1 samples (the end's reflect padding)
        self.started = False
        self.samples = 0

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """1-D float32 samples -> the feature frames (n_mfcc, k) they complete (k may be 0)."""
        self.samples += samples.numel()
        self.last = torch.cat([self.last, samples])[-(self.pad + 1):]
        if not self.started:
            self.head = torch.cat([self.head, samples])
            if self.head.numel() <= self.pad:
                return torch.zeros(self.n_mfcc, 0)
            self.buffer, self.head, self.started = torch.cat([self.head[1:self.pad + 1].flip(0), self.head]), \
                torch.zeros(0), True
        else:
            self.buffer = torch.cat([self.buffer, samples])
        return self._frames()

    def finish(self) -> torch.Tensor:
        """The last frames, over the reflect-padded end (none for audio of n_fft/2 samples or fewer, which the
        offline features cannot take either)."""
        if not self.started:
            return torch.zeros(self.n_mfcc, 0)
        self.buffer = torch.cat([self.buffer, self.last[:-1].flip(0)])
        return self._frames()

    def _frames(self) -> torch.Tensor:
        if self.buffer.numel() < self.n_fft:
            return torch.zeros(self.n_mfcc, 0)
        k = (self.buffer.numel() - self.n_fft) // self.hop + 1
        frames = self.mfcc(self.buffer[:(k - 1) * self.hop + self.n_fft])
        self.buffer = self.buffer[k * self.hop:]
        return frames


class ModelStream:
    """Feature frames in pieces -> the log-probabilities (T, classes) the streaming model gives on the whole
    utterance, frame by frame as soon as their receptive field is complete.

    The convolutions are recomputed on a sliding window: the stem (3 frames, stride time_stride) keeps its stride
    alignment, and the residual blocks' 2 * cnn_layers frames of context on each side are kept; only the frames
    whose context the window holds are passed on, to the model's own layers after the convolutions
    (`SpeechModel.tail`, as `forward` runs them) with a StreamState: the GRUs carry their hidden states, the
    look-ahead keeps its last `lookahead` input frames. At `finish` every stage is padded with zeros as the offline
    model pads the end."""

    def __init__(self, model: SpeechModel):
        self.model = model
        self.stride = model.stem.stride[1]
        self.context = 2 * len(model.cnn)  # frames each side a stem output's CNN output depends on
        self.reset()

    def reset(self) -> None:
        m = self.model
        self.features = torch.zeros(m.mean.numel(), 0, device=self.device)  # normalized, from feature_start on
        self.feature_start = 0   # feature index of self.features' first frame
        self.feature_count = 0   # feature frames received
        self.stem_count = 0      # stem outputs computed
        self.stem_out: torch.Tensor | None = None  # (1, C, F', n) stem outputs from stem_start on
        self.stem_start = 0
        self.cnn_count = 0       # CNN outputs passed on
        self.state = StreamState.start(m)  # the GRUs' hidden states, the look-ahead's frames awaiting their future

    @property
    def device(self) -> torch.device:
        return self.model.stem.weight.device

    def push(self, frames: torch.Tensor, final: bool = False) -> torch.Tensor:
        """Raw feature frames (n_mfcc, k) -> the log-probabilities (T, classes) now complete; final=True: the last
        frames (pads the end and passes everything on)."""
        m = self.model
        frames = m.normalize(frames.to(self.device)[None])[0]
        self.features = torch.cat([self.features, frames], dim=1)
        self.feature_count += frames.shape[1]
        x = self._stem(final)
        x = self._cnn(x, final)
        if x.shape[-1] == 0 and not final:
            return torch.zeros(0, m.classifier[-1].out_features)
        return m.tail(x, None, self.state, final)[0].cpu()

    def _stem(self, final: bool) -> torch.Tensor:
        """Stem outputs (1, C, F', n) that the frames so far complete (all of them when final)."""
        s, stem = self.stride, self.model.stem
        count = self.feature_count
        # a stem output reads one frame past its centre: before the end, the last frame received cannot be that one
        end = max(0, conv_output_length(count if final else count - 1, stem, 1))
        if self.stem_count == 0:  # the zero padding before the first frame
            window = torch.cat([self.features.new_zeros(self.features.shape[0], 1), self.features], dim=1)
        else:  # from the next stem output's first input frame (a stride over 3 skips frames kept below)
            window = self.features[:, s * self.stem_count - 1 - self.feature_start:]
        if final:  # and after the last (the stem's padding: at most one frame is read past the end)
            window = torch.cat([window, window.new_zeros(window.shape[0], 1)], dim=1)
        n = end - self.stem_count
        if n <= 0:
            return window.new_zeros(1, stem.out_channels, self.model.proj.in_features // stem.out_channels, 0)
        needed = s * (n - 1) + 3
        out = nn.functional.conv2d(window[None, None, :, :needed], stem.weight, stem.bias, stride=stem.stride,
                                   padding=(stem.padding[0], 0))
        # keep the features from the next stem output's first input frame on (or from the next frame to come, when
        # that one has not arrived yet)
        first = min(s * end - 1, count)
        self.features = self.features[:, first - self.feature_start:]
        self.feature_start = first
        self.stem_count = end
        return out

    def _cnn(self, new: torch.Tensor, final: bool) -> torch.Tensor:
        """The residual blocks' outputs (1, C, F', n) whose context the stem outputs so far complete."""
        x = new if self.stem_out is None else torch.cat([self.stem_out, new], dim=-1)
        end = self.stem_count if final else max(self.cnn_count, self.stem_count - self.context)
        if end <= self.cnn_count:
            self.stem_out = x
            return x[..., :0]
        y = x
        mask = torch.ones(1, 1, 1, y.shape[-1], dtype=y.dtype, device=y.device)
        for block in self.model.cnn:
            y = block(y, mask)
        out = y[..., self.cnn_count - self.stem_start:end - self.stem_start]
        keep = max(0, end - self.context)
        self.stem_out = x[..., keep - self.stem_start:]
        self.stem_start, self.cnn_count = keep, end
        return out


class StreamingRecognizer:
    """Live transcription with a Transcriber (see the module docstring).

    accept(samples) -> StreamUpdate (partial text and the segments that ended); finish() at the end of the audio;
    reset() to start another stream. Samples: mono float32 in [-1, 1] at `sample_rate`, any number per call.

    A streaming model (`--streaming`) streams exactly (`mode` "exact"). A bidirectional one needs the whole
    utterance, so it runs in `mode` "segment": the open segment's audio is run through the offline model again
    every `partial_ms` of new audio (the partial is that pass's greedy text, so each pass costs time proportional
    to the segment's length, bounded by max_segment_s), and the segment ends when that pass ends in a run of
    `endpoint_ms` of blank frames after some non-blank output, or at max_segment_s. exact_only=True refuses such
    a model instead: NotStreamable, in one line. Raises StreamError for non-positive durations.
    """

    def __init__(self, transcriber, *, endpoint_ms: float = 800.0, max_segment_s: float = 30.0,
                 partial_ms: float = 500.0, exact_only: bool = False):
        model = transcriber.model
        self.mode = "exact" if getattr(transcriber.fp32_model, "streaming", False) else "segment"
        if self.mode == "segment" and exact_only:
            raise NotStreamable("this model was trained bidirectional, so it needs the whole utterance; train one "
                                "with --streaming to transcribe live")
        if min(endpoint_ms, max_segment_s, partial_ms) <= 0:
            raise StreamError(f"endpoint_ms ({endpoint_ms:g}), max_segment_s ({max_segment_s:g}) and partial_ms "
                              f"({partial_ms:g}) must be positive")
        self.transcriber = transcriber
        self.feature_stream = FeatureStream(transcriber.features)
        self.model_stream = ModelStream(model) if self.mode == "exact" else None
        self.segment_mode = SegmentMode(self, partial_ms, max_segment_s) if self.mode == "segment" else None
        self.frame_seconds = transcriber.features.hop * model.stem.stride[1] / transcriber.sample_rate
        self.endpoint_frames = max(1, round(endpoint_ms / 1000 / self.frame_seconds))
        self.max_frames = max(1, round(max_segment_s / self.frame_seconds))
        self.reset()

    @property
    def sample_rate(self) -> int:
        """Samples must be mono float32 at this rate (Hz)."""
        return self.transcriber.sample_rate

    @property
    def frames_per_second(self) -> float:
        """Output frames (log-probability rows) per second of audio."""
        return 1.0 / self.frame_seconds

    @property
    def latency_seconds(self) -> float:
        """How far the audio must run past an output frame's centre before that frame is out (exact mode: see the
        module docstring; segment mode: the endpoint, as partials come every partial_ms anyway)."""
        t, model = self.transcriber, self.transcriber.model
        if self.segment_mode is not None:
            return self.endpoint_frames * self.frame_seconds
        frames = model.stem.stride[1] * (2 * len(model.cnn) + model.lookahead_frames) + 1
        return (frames * t.features.hop + t.features.n_fft // 2) / t.sample_rate

    @property
    def seconds(self) -> float:
        """Seconds of audio accepted so far."""
        samples = self.segment_mode.samples if self.segment_mode else self.feature_stream.samples
        return samples / self.sample_rate

    def reset(self) -> None:
        """Forgets the stream: the next accept() starts a new one."""
        self.feature_stream.reset()
        if self.model_stream is not None:
            self.model_stream.reset()
        if self.segment_mode is not None:
            self.segment_mode.reset()
        self.frames = 0            # output frames so far
        self.finished = False
        self._new_segment()

    def _new_segment(self) -> None:
        self.segment: list[torch.Tensor] = []  # the open segment's log-prob rows
        self.segment_partial = ""              # their greedy text, as of the last rows added
        self.segment_chars = ""                # their best path's characters, repeats merged and blanks dropped
        self.last_label = BLANK                # the best label of their last row
        self.speech_start: int | None = None   # first and last non-blank frames of the open segment
        self.speech_end = 0
        self.blank_run = 0

    def accept(self, samples: np.ndarray | torch.Tensor) -> StreamUpdate:
        """Feeds the next samples (1-D, any length, including 0) -> the partial text and the segments that ended.
        Raises StreamError for samples that are not 1-D, or after finish() without reset()."""
        if self.segment_mode is not None:
            return self.segment_mode.accept(self._wave(samples))
        return self._take(self.advance(samples))

    def finish(self) -> StreamUpdate:
        """End of the audio: the last frames, and the open segment finalized. Then reset() starts another stream."""
        if self.finished:
            return StreamUpdate("", ())
        if self.segment_mode is not None:
            self.finished = True
            return self.segment_mode.finish()
        update = self._take(self.advance(None))
        return StreamUpdate("", update.finals + self._finalize())

    def _wave(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Samples as a 1-D float32 CPU tensor. Raises StreamError as accept() does."""
        if self.finished:
            raise StreamError("this stream is finished: call reset() to start another")
        wave = torch.as_tensor(np.asarray(samples) if not isinstance(samples, torch.Tensor) else samples)
        if wave.dim() != 1:
            raise StreamError(f"expected mono samples (1-D), got shape {tuple(wave.shape)}")
        return wave.detach().float().cpu()

    def advance(self, samples: np.ndarray | torch.Tensor | None) -> torch.Tensor:
        """The model's side of `accept` (None: of `finish`): the log-probabilities (frames, classes) of the output
        frames these samples complete, float32, which accept() then segments. Across a stream they equal the
        offline model's on the whole audio (exact mode only). Raises StreamError as accept() does, and in segment
        mode."""
        if self.segment_mode is not None:
            raise StreamError("a bidirectional model streams in segment mode: its log-probabilities are those of "
                              "the open segment's latest pass, not per frame")
        if samples is None:
            if self.finished:
                raise StreamError("this stream is finished: call reset() to start another")
            self.finished = True
            with torch.inference_mode():
                return self._log_probs(self.feature_stream.finish(), final=True)
        wave = self._wave(samples)
        with torch.inference_mode():
            return self._log_probs(self.feature_stream.push(wave), final=False)

    def held(self) -> dict[str, int]:
        """What the recognizer holds now, in samples or frames per buffer: bounded whatever the stream's length."""
        if self.segment_mode is not None:
            return {"samples": self.segment_mode.held}
        f, m = self.feature_stream, self.model_stream
        return {"samples": f.buffer.numel() + f.head.numel() + f.last.numel(), "feature_frames": m.features.shape[1],
                "stem_frames": 0 if m.stem_out is None else m.stem_out.shape[-1],
                "lookahead_frames": 0 if m.state.pending is None else m.state.pending.shape[1],
                "segment_frames": len(self.segment)}

    def _log_probs(self, frames: torch.Tensor, final: bool) -> torch.Tensor:
        if frames.shape[1] == 0 and not final:
            return torch.zeros(0, 0)
        t = self.transcriber
        with autocast(t.device, t.precision.dtype):
            return self.model_stream.push(frames, final)

    def _take(self, log_probs: torch.Tensor) -> StreamUpdate:
        """Adds output frames to the open segment, finalizing segments at endpoints. The partial (greedy text) is
        kept up frame by frame, from the new frames' best labels only (the model is not re-run or re-decoded over
        the segment; only the text join covers it)."""
        finals: list[Segment] = []
        log_probs = log_probs.float()
        best = log_probs.argmax(dim=-1).tolist() if log_probs.numel() else []
        symbols = self.transcriber.text.vocabulary.symbols
        for row, label in zip(log_probs, best, strict=True):
            self.segment.append(row.clone())  # not a view: it would keep its whole chunk's rows alive
            if label != self.last_label and label != BLANK:  # greedy decoding's collapse, one frame at a time
                self.segment_chars += symbols[label]
            self.last_label = label
            if label != BLANK:
                if self.speech_start is None:
                    self.speech_start = self.frames
                self.speech_end, self.blank_run = self.frames, 0
            else:
                self.blank_run += 1
            self.frames += 1
            if self.speech_start is None and len(self.segment) > self.endpoint_frames:
                self.segment.pop(0)  # leading silence: only the last endpoint's worth is kept
            elif (self.speech_start is not None and self.blank_run >= self.endpoint_frames) \
                    or len(self.segment) >= self.max_frames:
                finals += self._finalize()
        if best and self.speech_start is not None:  # no new rows (a chunk shorter than a frame): text as it was
            self.segment_partial = " ".join(self.segment_chars.split())  # as greedy_decode spaces it
        return StreamUpdate(self.segment_partial, tuple(finals))

    def _finalize(self) -> tuple[Segment, ...]:
        """The open segment as a Segment (none when it holds no speech, or decodes to no text); a new one opens."""
        segment, start, end = self.segment, self.speech_start, self.speech_end
        self._new_segment()
        if start is None:
            return ()
        text = self.transcriber.decoder(torch.stack(segment)[None].float(), torch.tensor([len(segment)]))[0]
        if not text:
            return ()
        # a frame's span may reach past the audio's last sample: a segment never ends after the audio heard
        return (Segment(text, start * self.frame_seconds, min((end + 1) * self.frame_seconds, self.seconds)),)


class SegmentMode:
    """A bidirectional model's live transcription (StreamingRecognizer's mode "segment"): the open segment's audio,
    run through the offline model again every `partial_ms` of new audio. Holds at most max_segment_s of audio (the
    open segment's; before any speech, only the last endpoint's worth), as the pieces it came in, concatenated once
    a pass (not once a piece: a chunk costs the same early and late in a segment)."""

    def __init__(self, owner: StreamingRecognizer, partial_ms: float, max_segment_s: float):
        self.owner = owner
        rate = owner.transcriber.sample_rate
        self.every = max(1, round(partial_ms / 1000 * rate))
        self.max_samples = max(1, round(max_segment_s * rate))
        self.min_samples = owner.transcriber.features.n_fft // 2 + 1  # what the centered STFT needs
        self.reset()

    def reset(self) -> None:
        self.pieces: list[torch.Tensor] = []  # the open segment's samples, in order
        self.held = 0                # how many
        self.audio_start = 0         # stream sample index of the first
        self.samples = 0             # samples accepted
        self.since_pass = 0
        self.partial = ""

    def accept(self, wave: torch.Tensor) -> StreamUpdate:
        finals: list[Segment] = []
        for piece in wave.split(self.every):  # passes every partial_ms, and segments no longer than the maximum
            room = max(0, self.max_samples - self.held)
            for part in (piece[:room], piece[room:]):
                if not part.numel():
                    continue
                self.pieces.append(part.clone())  # not a view: the caller may reuse its buffer
                self.held += part.numel()
                self.samples += part.numel()
                self.since_pass += part.numel()
                if self.since_pass >= self.every or self.held >= self.max_samples:
                    finals += self._pass(final=False)
        return StreamUpdate(self.partial, tuple(finals))

    def finish(self) -> StreamUpdate:
        return StreamUpdate("", self._pass(final=True))

    def _pass(self, final: bool) -> tuple[Segment, ...]:
        """Runs the offline model on the open segment; finalizes it at an endpoint, its maximum or the end."""
        self.since_pass = 0
        t, owner = self.owner.transcriber, self.owner
        if self.held < self.min_samples:
            return ()
        audio = self.audio()
        with torch.inference_mode():
            feats = t.features(audio)
            with autocast(t.device, t.precision.dtype):
                log_probs, _ = t.model(feats[None].to(t.device), torch.tensor([feats.shape[-1]], device=t.device))
        log_probs = log_probs[0].float().cpu()
        spoken = (log_probs.argmax(dim=-1) != BLANK).nonzero().flatten().tolist()
        if not spoken:  # leading silence: keep the last endpoint's worth, where speech may be starting
            keep = 0 if final else min(self.held, round(owner.endpoint_frames * owner.frame_seconds * t.sample_rate))
            self._drop(self.held - keep)
            self.partial = ""
            return ()
        ended = log_probs.shape[0] - 1 - spoken[-1] >= owner.endpoint_frames
        if not (final or ended or self.held >= self.max_samples):
            self.partial = greedy_decode(log_probs[None], torch.tensor([log_probs.shape[0]]), t.text.vocabulary)[0]
            return ()
        text = t.decoder(log_probs[None], torch.tensor([log_probs.shape[0]]))[0]
        offset = self.audio_start / t.sample_rate
        seconds = owner.frame_seconds
        heard = (self.audio_start + self.held) / t.sample_rate
        segment = Segment(text, offset + spoken[0] * seconds, min(offset + (spoken[-1] + 1) * seconds, heard))
        self._drop(self.held)
        self.partial = ""
        return (segment,) if text else ()

    def audio(self) -> torch.Tensor:
        """The open segment's samples (held,), its pieces concatenated (and kept as one)."""
        if len(self.pieces) != 1:
            self.pieces = [torch.cat(self.pieces)] if self.pieces else [torch.zeros(0)]
        return self.pieces[0]

    def _drop(self, n: int) -> None:
        """Forgets the open segment's first n samples."""
        rest = self.audio()[n:]
        self.pieces = [rest] if rest.numel() else []
        self.held -= n
        self.audio_start += n
