"""Live audio for `asr transcribe --stream`: mono float32 chunks at the model's rate from stdin (raw PCM, or an
audio file in a container, told apart by its first bytes), from a file (as fast as it reads, or paced at real
time) or from the microphone; fed to a streaming recognizer; its finalized segments printed one a line.

Every source ends in the same two steps: a `StreamResampler` (the model's rate, with no seams between chunks)
and a `Rechunker` (chunks of exactly --chunk_ms, the last one shorter).
"""

from __future__ import annotations

import io
import json
import math
import queue
import shutil
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import numpy as np
import soundfile as sf
import torch
import torchaudio

from asr import first_line
from asr.audio import AudioError, check_finite, open_audio, read_blocks
from asr.streaming import Segment, StreamingRecognizer, StreamUpdate

STDIN = "-"
RAW_HELP = "ffmpeg -i IN -f s16le -ac 1 -ar 16000 - | asr transcribe --stream -"


# ------------------------------------------------------------------------------------------------- PCM bytes
@dataclass(frozen=True)
class PcmFormat:
    """Interleaved little-endian PCM: the numpy type of one sample as stored, its width, and full scale."""
    name: str
    dtype: str
    width: int
    scale: float


PCM_FORMATS = {f.name: f for f in (
    PcmFormat("s16le", "<i2", 2, 32768.0),
    PcmFormat("s24le", "<i4", 3, 8388608.0),  # 3 bytes a sample, widened to int32 when decoded
    PcmFormat("s32le", "<i4", 4, 2147483648.0),
    PcmFormat("f32le", "<f4", 4, 1.0),
    PcmFormat("f64le", "<f8", 8, 1.0),
    PcmFormat("u8", "u1", 1, 128.0),
)}


class PcmDecoder:
    """Bytes of interleaved PCM in pieces of any length -> mono float32 samples in [-1, 1] (channels averaged).
    A piece that ends inside a frame keeps those bytes for the next one; `leftover` says how many are held."""

    def __init__(self, fmt: PcmFormat, channels: int = 1):
        self.fmt, self.channels = fmt, channels
        self.frame_bytes = fmt.width * channels
        self._rest = b""

    @property
    def leftover(self) -> int:
        return len(self._rest)

    def __call__(self, data: bytes) -> np.ndarray:
        data = self._rest + data
        whole = len(data) - len(data) % self.frame_bytes
        self._rest, data = data[whole:], data[:whole]
        if self.fmt.width == 3:
            b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
            values = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 bits
        else:
            values = np.frombuffer(data, self.fmt.dtype)
        samples = values.astype(np.float32)
        if self.fmt.name == "u8":
            samples -= 128.0
        samples /= self.fmt.scale
        return samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)


# ---------------------------------------------------------------------------------------- resampling, chunks
class StreamResampler:
    """Resamples a stream chunk by chunk to exactly what `torchaudio.functional.resample` gives for the whole
    stream (up to float rounding): each output block is computed once all the input it depends on has arrived.
    The sinc kernel is built once, here (`torchaudio.transforms.Resample`, float32 as the functional builds it for
    float32 audio), not per chunk."""

    def __init__(self, orig: int, new: int):
        g = math.gcd(orig, new)
        self.orig, self.new = orig // g, new // g  # one block: `orig` samples in, `new` out
        self.same = orig == new
        self._resample = None if self.same else torchaudio.transforms.Resample(self.orig, self.new,
                                                                               dtype=torch.float32)
        # the kernel reaches this far either side of a block
        self.width = 0 if self._resample is None else self._resample.width
        self._buf = np.zeros(0, np.float32)
        self._base = 0       # stream index of _buf[0] (a multiple of orig)
        self._block = 0      # next output block to emit
        self._seen = 0       # input samples so far

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        if self.same:
            return chunk
        self._buf = np.concatenate([self._buf, chunk.astype(np.float32, copy=False)])
        self._seen += len(chunk)
        # block b needs input up to b*orig + width + orig
        ready = (self._seen - self.width - self.orig) // self.orig + 1
        return self._emit(max(ready, self._block), final=False)

    def flush(self) -> np.ndarray:
        """The rest of the output, once the input has ended."""
        if self.same:
            return np.zeros(0, np.float32)
        return self._emit(None, final=True)

    def _emit(self, upto: int | None, final: bool) -> np.ndarray:
        if (upto is not None and upto <= self._block) or len(self._buf) == 0:
            return np.zeros(0, np.float32)
        out = self._resample(torch.from_numpy(self._buf)).numpy()
        first = (self._block - self._base // self.orig) * self.new
        if final:
            total = math.ceil(self._seen * self.new / self.orig)  # torchaudio's length for the whole stream
            piece = out[first: total - self._base // self.orig * self.new]
            self._block = math.ceil(total / self.new)
        else:
            piece = out[first: (upto - self._base // self.orig) * self.new]
            self._block = upto
        # keep the input the next blocks reach back to
        base = max(0, (self._block * self.orig - self.width) // self.orig * self.orig)
        self._buf, self._base = self._buf[base - self._base:], base
        return piece.copy()


class Rechunker:
    """Samples in pieces of any length -> chunks of exactly `size` samples (`flush` gives the shorter rest)."""

    def __init__(self, size: int):
        self.size = size
        self._buf = np.zeros(0, np.float32)

    def __call__(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        self._buf = np.concatenate([self._buf, samples])
        while len(self._buf) >= self.size:
            yield self._buf[: self.size]
            self._buf = self._buf[self.size:]

    def flush(self) -> Iterator[np.ndarray]:
        if len(self._buf):
            yield self._buf
        self._buf = np.zeros(0, np.float32)


def to_chunks(pieces: Iterable[np.ndarray], rate: int, sample_rate: int, chunk: int) -> Iterator[np.ndarray]:
    """Mono float32 pieces at `rate` -> chunks of `chunk` samples at `sample_rate`."""
    resample, rechunk = StreamResampler(rate, sample_rate), Rechunker(chunk)
    for piece in pieces:
        yield from rechunk(resample(piece))
    yield from rechunk(resample.flush())
    yield from rechunk.flush()


# --------------------------------------------------------------------------------------------------- stdin
CONTAINERS = {b"fLaC": "FLAC", b"OggS": "Ogg", b"FORM": "AIFF", b".snd": "AU", b"RF64": "RF64", b"caff": "CAF",
              b"ID3": "MP3"}
NOT_AUDIO = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF document",
             b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "gzip data", b"\x7fELF": "a program"}
HEAD = 12


def sniff(head: bytes, name: str = "stdin") -> str:
    """What the first bytes of a stream say it is: 'wav', a container soundfile reads ('FLAC', 'Ogg', ...), or
    'raw' (PCM). Raises AudioError for an empty stream, text, or a known kind of file that is not audio."""
    if not head:
        raise AudioError(f"{name}: no audio, the input is empty")
    if head[:4] == b"RIFF":
        if head[8:12] != b"WAVE":
            raise AudioError(f"{name}: this is a RIFF file of kind {head[8:12]!r} (AVI?), not WAVE audio")
        return "wav"
    for magic, kind in CONTAINERS.items():
        if head.startswith(magic):
            return kind
    for magic, kind in NOT_AUDIO.items():
        if head.startswith(magic):
            raise AudioError(f"{name}: this is {kind}, not audio")
    if all(32 <= c < 127 or c in b"\t\n\r" for c in head):
        raise AudioError(f"{name}: this is text, not audio (expected raw PCM or an audio file: {RAW_HELP})")
    return "raw"


@dataclass(frozen=True)
class WavStream:
    fmt: PcmFormat
    channels: int
    rate: int
    data_bytes: int | None  # None: until the end of the stream (a WAV written to a pipe cannot say its length)


WAV_PCM, WAV_FLOAT, WAV_EXTENSIBLE = 1, 3, 0xFFFE


def read_wav_header(stream: BinaryIO, name: str = "stdin") -> WavStream | None:
    """Reads a WAV header from `stream`, positioned just after RIFF....WAVE, up to the start of its samples.
    None when they are in an encoding other than integer or float PCM (soundfile then decodes the whole file).
    Raises AudioError for a header cut short or without a fmt chunk."""
    fmt = None
    while True:
        head = stream.read(8)
        if len(head) < 8:
            raise AudioError(f"{name}: the WAV header is cut short (no data chunk)")
        chunk_id, size = head[:4], struct.unpack("<I", head[4:])[0]
        if chunk_id == b"data":
            if fmt is None:
                raise AudioError(f"{name}: WAV data before its fmt chunk; the file is corrupt")
            known = size not in (0, 0xFFFFFFFF)  # what writers to pipes put there
            return WavStream(*fmt, data_bytes=size if known else None) if fmt[0] else None
        body = stream.read(size + size % 2)
        if len(body) < size:
            raise AudioError(f"{name}: the WAV header is cut short")
        if chunk_id == b"fmt ":
            if size < 16:
                raise AudioError(f"{name}: WAV fmt chunk of {size} bytes; the file is corrupt")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == WAV_EXTENSIBLE and size >= 26:
                tag = struct.unpack("<H", body[24:26])[0]
            pcm = {(WAV_PCM, 8): "u8", (WAV_PCM, 16): "s16le", (WAV_PCM, 24): "s24le", (WAV_PCM, 32): "s32le",
                   (WAV_FLOAT, 32): "f32le", (WAV_FLOAT, 64): "f64le"}.get((tag, bits))
            if channels < 1 or rate < 1:
                raise AudioError(f"{name}: WAV header with {channels} channels at {rate} Hz; the file is corrupt")
            fmt = (PCM_FORMATS[pcm] if pcm else None, channels, rate)


def read_pieces(stream: BinaryIO, nbytes: int, limit: int | None = None) -> Iterator[bytes]:
    """Reads of `nbytes` (fewer at the end) until the stream or `limit` bytes end."""
    left = limit
    while left is None or left > 0:
        data = stream.read(nbytes if left is None else min(nbytes, left))
        if not data:
            return
        if left is not None:
            left -= len(data)
        yield data


def pcm_pieces(stream: BinaryIO, decode: PcmDecoder, piece_frames: int, limit: int | None = None,
               head: bytes = b"") -> Iterator[np.ndarray]:
    """Decoded samples of the PCM in `stream` (after `head`, bytes already read); a part of a frame at the end stays
    in `decode` (check_whole)."""
    if head:
        yield decode(head)
    for data in read_pieces(stream, piece_frames * decode.frame_bytes, limit):
        yield decode(data)


def check_whole(decode: PcmDecoder, name: str) -> None:
    """Raises AudioError when the PCM ended inside a frame (those bytes are dropped)."""
    if decode.leftover:
        raise AudioError(f"{name}: the input ended {decode.leftover} byte{'s' * (decode.leftover != 1)} into a "
                         f"{decode.frame_bytes}-byte {decode.fmt.name} frame (cut short?); those bytes were dropped")


def stdin_kind(stream: BinaryIO, name: str = "stdin") -> tuple[str, bytes]:
    """(sniff's answer, the bytes read to find it): what a command checks before it loads a model."""
    head = stream.read(HEAD)
    return sniff(head, name), head


def stream_chunks(stream: BinaryIO, kind: str, head: bytes, sample_rate: int, chunk: int, raw_format: str,
                  raw_rate: int, say: Callable[[str], None], name: str = "stdin") -> Iterator[np.ndarray]:
    """Chunks of `chunk` samples at `sample_rate` from a stream whose first bytes `head` were `kind` (sniff's
    answer). Raw PCM (`raw_format`, mono, `raw_rate` Hz) and PCM WAV are decoded as they arrive; other
    containers once the stream ends (soundfile needs to seek in them), saying so once through `say`. Raises
    AudioError for audio that cannot be decoded, or after the last chunk when the stream ends inside a frame."""
    if kind == "raw":
        decode = PcmDecoder(PCM_FORMATS[raw_format])
        per_read = max(1, chunk * raw_rate // sample_rate)
        yield from to_chunks(_finite(pcm_pieces(stream, decode, per_read, head=head), name), raw_rate, sample_rate,
                             chunk)
        check_whole(decode, name)
        return
    if kind == "wav":
        seen = _Recording(stream)
        wav = read_wav_header(seen, name)
        if wav is not None:
            decode = PcmDecoder(wav.fmt, wav.channels)
            per_read = max(1, chunk * wav.rate // sample_rate)
            yield from to_chunks(_finite(pcm_pieces(stream, decode, per_read, wav.data_bytes), name), wav.rate,
                                 sample_rate, chunk)
            check_whole(decode, name)
            return
        head, kind = head + seen.data, "WAV in this encoding"
    audio = open_audio(io.BytesIO(head + stream.read()), name)
    say(f"{name}: {kind} cannot be decoded as it arrives (soundfile needs to seek in it): decoded once the input "
        f"ended; for live input pipe raw PCM ({RAW_HELP})")
    yield from file_chunks(audio, sample_rate, chunk, name)


class _Recording:
    """Reads from `stream`, keeping what was read in `data`."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.data = stream, b""

    def read(self, n: int) -> bytes:
        got = self.stream.read(n)
        self.data += got
        return got


# ---------------------------------------------------------------------------------------------- files, pacing
def file_chunks(f: sf.SoundFile, sample_rate: int, chunk: int, name: str) -> Iterator[np.ndarray]:
    """Chunks of `chunk` samples at `sample_rate` of an open audio file (open_audio), read a block at a time and
    closed at the end."""
    with f:
        per_read = max(1, chunk * f.samplerate // sample_rate)
        blocks = (b.mean(axis=1, dtype=np.float32) for b in read_blocks(f, per_read, name))
        yield from to_chunks(_finite(blocks, name), f.samplerate, sample_rate, chunk)


def _finite(blocks: Iterable[np.ndarray], name: str) -> Iterator[np.ndarray]:
    """`blocks`, each checked as load_audio checks a whole file (check_finite: AudioError at the first block with
    a NaN or infinite sample, counting that block's)."""
    for b in blocks:
        check_finite(b, name)
        yield b


def paced(chunks: Iterable[np.ndarray], sample_rate: int, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[np.ndarray]:
    """`chunks` at real time: each is given once its last sample would have been recorded (the first chunk of
    0.1 s at 0.1 s after the start, and so on), as a live source gives them."""
    start, samples = clock(), 0
    for c in chunks:
        samples += len(c)
        if (wait := start + samples / sample_rate - clock()) > 0:
            sleep(wait)
        yield c


# ------------------------------------------------------------------------------------------------ microphone
MIC_HELP = "--mic needs the sounddevice package: pip install sounddevice (or pip install 'asr-mlflow[mic]')"


def _sounddevice():
    """The sounddevice module; AudioError when it, or the PortAudio library under it, is missing."""
    try:
        import sounddevice
    except ImportError:
        raise AudioError(MIC_HELP) from None
    except OSError as e:  # sounddevice is there, PortAudio is not
        raise AudioError(f"--mic: sounddevice cannot load PortAudio ({first_line(e)}): install it, e.g. "
                         "apt-get install libportaudio2") from None
    return sounddevice


def check_microphone() -> None:
    """Raises AudioError when --mic cannot work here: no sounddevice, or no input device."""
    sd = _sounddevice()
    try:
        sd.query_devices(kind="input")
    except Exception as e:  # noqa: BLE001 -- PortAudioError, or ValueError when there is no default device
        raise AudioError(f"--mic: no microphone ({first_line(e)})") from None


def mic_chunks(sample_rate: int, chunk: int) -> Iterator[np.ndarray]:
    """Chunks of `chunk` samples at `sample_rate` from the default microphone, mono, until the caller stops (Ctrl-C
    raises KeyboardInterrupt in the caller's loop). Records at `sample_rate` when the device takes it, else at its
    own rate, resampled."""
    sd = _sounddevice()
    captured: queue.Queue[np.ndarray] = queue.Queue()

    def callback(data, frames, when, status):  # PortAudio's thread
        captured.put(data.mean(axis=1, dtype=np.float32).copy())

    rate = sample_rate
    try:
        sd.check_input_settings(samplerate=rate, channels=1, dtype="float32")
    except Exception:  # noqa: BLE001 -- the device's own rate then
        rate = int(sd.query_devices(kind="input")["default_samplerate"])
    try:
        stream = sd.InputStream(samplerate=rate, channels=1, dtype="float32",
                                blocksize=max(1, chunk * rate // sample_rate), callback=callback)
    except Exception as e:  # noqa: BLE001 -- PortAudioError
        raise AudioError(f"--mic: cannot open the microphone ({first_line(e)})") from None

    def pieces() -> Iterator[np.ndarray]:
        while True:
            try:
                yield captured.get(timeout=0.2)
            except queue.Empty:
                continue

    with stream:
        yield from to_chunks(pieces(), rate, sample_rate, chunk)


# ------------------------------------------------------------------------------------------- recognize, print
def format_segment(seg: Segment) -> str:
    """One finalized segment as a line: `[  12.34 -   15.10] text` (start and end in seconds from the start of the
    stream, 2 decimals, right-aligned in 7 characters)."""
    return f"[{seg.start:7.2f} - {seg.end:7.2f}] {seg.text}"


class Printer:
    """Writes a recognizer's updates to `out`: each final segment on its own line (format_segment, or with `json`
    {"start", "end", "text"}); partials on one refreshing line when `tty` (text mode), or with `json` and
    `partials` as {"partial": text} lines whenever the partial text changes."""

    def __init__(self, out: TextIO, *, json_lines: bool, partials: bool, tty: bool):
        self.out, self.json_lines, self.partials, self.tty = out, json_lines, partials, tty
        self._shown = ""  # partial text on the terminal line now

    def __call__(self, update: StreamUpdate) -> None:
        for seg in update.finals:
            self._clear()
            self._line(json.dumps({"start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text})
                       if self.json_lines else format_segment(seg))
        if self.json_lines:
            if self.partials and update.partial != self._shown:
                self._shown = update.partial
                self._line(json.dumps({"partial": update.partial}))
        elif self.tty and update.partial != self._shown:
            self._shown = update.partial
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r\x1b[K" + update.partial[-width:])
            self.out.flush()

    def close(self) -> None:
        """Clears the partial line (the end of the stream)."""
        self._clear()

    def _clear(self) -> None:
        if self.tty and not self.json_lines and self._shown:
            self.out.write("\r\x1b[K")
            self._shown = ""

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While in the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does (a stream stopped by `kill`, a service
    manager or a container's stop then finalizes what was heard, as `recognize` does at Ctrl-C, instead of dying
    with it); the previous handler is put back after. Outside the main thread (where signals cannot be handled) it
    changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def recognize(chunks: Iterable[np.ndarray], recognizer: StreamingRecognizer,
              emit: Callable[[StreamUpdate], None]) -> bool:
    """Feeds `chunks` to `recognizer`, giving every update to `emit`, and finalizes the open segment at the end of
    the input, at Ctrl-C, and before an AudioError from the input is raised again (what was heard is kept). Returns
    whether Ctrl-C stopped it."""
    interrupted = False
    try:
        for c in chunks:
            emit(recognizer.accept(c))
    except KeyboardInterrupt:
        interrupted = True
    except AudioError:
        emit(recognizer.finish())
        raise
    finally:
        if callable(close := getattr(chunks, "close", None)):
            close()  # a generator's with-blocks (the microphone) end now, not when it is collected
    emit(recognizer.finish())
    return interrupted
