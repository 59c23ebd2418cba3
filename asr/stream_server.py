"""Live transcription over WebSocket (`asr serve-stream`): one model, loaded once, shared by every connection; one
`asr.streaming.StreamingRecognizer` (the stream's state alone) per connection.

Protocol (README, "Real-time transcription"), one stream per connection:
  client -> server
    - optionally first, a text message {"sample_rate": 16000, "format": "s16le"} ("s16le": 16-bit signed
      little-endian integers, the default; "f32le": 32-bit little-endian floats in [-1, 1]): a rate other than the
      model's is refused (error, then close 1003);
    - binary messages of raw mono PCM in that format at the model's rate, any length (whole samples);
    - a text message {"type": "end"} (or "eof") when the audio is over.
  server -> client, JSON text messages
    - {"type": "partial", "text": ...}: the open segment's text so far, whenever it changes;
    - {"type": "final", "text": ..., "start": s, "end": s}: a finished segment (seconds from the stream's start);
    - {"type": "error", "message": ...}: a message refused (the stream goes on) or, before a close, why it closes;
    - {"type": "done"} after the end: every final has been sent; the server then closes the connection (1000).
Limits: a message over max_message_bytes (error, close 1009), more than max_connections at once (error, close
1013), more than max_session_seconds of audio (error, the finals so far, done, close 1008). A text message that
is not JSON, an unknown type, or an odd byte count is answered with an error and the stream goes on. The model runs
in a thread pool, so one connection's compute never holds up the others; each connection's messages are handled
in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from asr import first_line
from asr.listening import cannot_listen
from asr.live import PCM_FORMATS, PcmDecoder
from asr.streaming import StreamingRecognizer, StreamUpdate

FORMATS = ("s16le", "f32le")  # the sample formats a client may declare (asr.live.PCM_FORMATS decodes them)
END_TYPES = ("end", "eof")
CONFIG_TYPES = (None, "config", "start")  # the first text message may say {"type": "config"} or nothing
# Messages over max_message_bytes but within this many times it are read and answered with an error; larger ones
# are cut off by the WebSocket library itself (close 1009, no error message), so no message is ever held in full.
READ_FACTOR = 2


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 1 << 20   # one binary or text message
    max_connections: int = 16          # open at once; more are refused
    max_session_seconds: float = 3600  # audio per connection


@dataclass(frozen=True)
class StreamSettings:
    endpoint_ms: float = 800.0   # a pause this long ends a segment
    max_segment_s: float = 30.0  # a segment is ended at this length whatever the pauses


class Refused(Exception):
    """A client message the stream cannot take; `close` is the close code when the connection ends with it, None
    when the stream goes on."""

    def __init__(self, message: str, close: int | None = None):
        super().__init__(message)
        self.close = close


class StreamServer:
    """The WebSocket handler and its shared state: the transcriber, the thread pool the model runs in, and the count
    of open connections."""

    def __init__(self, transcriber, limits: Limits = Limits(), stream: StreamSettings = StreamSettings(),
                 threads: int = 0, log: Callable[[str], None] | None = None):
        self.transcriber = transcriber
        self.limits = limits
        self.stream = stream
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.pool = concurrent.futures.ThreadPoolExecutor(threads or min(4, os.cpu_count() or 1),
                                                          thread_name_prefix="asr-stream")
        self.active = 0
        self.ids = itertools.count(1)

    @property
    def sample_rate(self) -> int:
        return self.transcriber.sample_rate

    def recognizer(self) -> StreamingRecognizer:
        return StreamingRecognizer(self.transcriber, endpoint_ms=self.stream.endpoint_ms,
                                   max_segment_s=self.stream.max_segment_s)

    async def handle(self, ws: ServerConnection) -> None:
        """One connection: refused when max_connections are open, else one stream. Never raises: whatever goes
        wrong is logged, told to the client and ends this connection only."""
        cid, peer = next(self.ids), ws.remote_address
        if self.active >= self.limits.max_connections:
            self.log(f"connection {cid} from {peer}: refused, {self.active} open (--max_connections)")
            await self._close(ws, f"server busy: {self.active} connections open, the most it takes "
                                  "(--max_connections); try again later", CloseCode.TRY_AGAIN_LATER)
            return
        session = Session(self)
        self.active += 1
        try:
            how = await session.run(ws)
        except ConnectionClosed:
            how = "client left mid-stream"
        except Exception as e:  # noqa: BLE001 -- the server outlives any one connection
            self.log(f"connection {cid}: internal error\n{traceback.format_exc()}")
            how = f"internal error: {first_line(e)}"
            await self._close(ws, how, CloseCode.INTERNAL_ERROR)
        finally:
            self.active -= 1
        self.log(f"connection {cid} from {peer}: {how}; {session.seconds:.1f} s of audio, {session.finals} finals; "
                 f"its state freed ({self.active} open)")

    async def _close(self, ws: ServerConnection, message: str, code: int) -> None:
        try:
            await send(ws, {"type": "error", "message": message})
            await close(ws, code, message)
        except ConnectionClosed:
            pass

    async def compute(self, fn: Callable[..., StreamUpdate], *args) -> StreamUpdate:
        """fn(*args) in the thread pool: the event loop goes on serving the other connections meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def serve(self, host: str, port: int, stop: asyncio.Future, ready: Callable[[int], None]) -> None:
        """Listens on host:port until `stop` is done; `ready` gets the port once it listens. Raises UserError when
        the address cannot be bound."""
        try:
            server = await serve(self.handle, host, port, max_size=READ_FACTOR * self.limits.max_message_bytes,
                                 compression=None)
        except OSError as e:  # taken since the command's check_address (or run() called without one)
            raise cannot_listen(host, port, e) from None
        async with server:
            ready(server.sockets[0].getsockname()[1])
            await stop
        self.pool.shutdown(wait=False, cancel_futures=True)


class Session:
    """One connection's stream: its format, the audio accepted so far and its recognizer."""

    def __init__(self, server: StreamServer):
        self.server = server
        self.recognizer = server.recognizer()
        self.decode = PcmDecoder(PCM_FORMATS["s16le"])
        self.samples = 0      # accepted so far
        self.finals = 0       # sent so far
        self.partial = ""     # last sent

    @property
    def seconds(self) -> float:
        return self.samples / self.server.sample_rate

    async def run(self, ws: ServerConnection) -> str:
        """Serves the stream until its end or the client leaves; returns how it ended (for the log)."""
        async for message in ws:
            try:
                if isinstance(message, str):
                    if await self.text(ws, message):
                        return "stream ended"
                else:
                    await self.audio(ws, message)
            except Refused as e:
                await send(ws, {"type": "error", "message": str(e)})
                if e.close is not None:
                    if e.close == CloseCode.POLICY_VIOLATION:  # the session is over: what was heard still counts
                        await self.flush(ws, await self.server.compute(self.recognizer.finish))
                        await send(ws, {"type": "done"})
                    await close(ws, e.close, str(e))
                    return f"closed: {e}"
        return "client closed before the end message"

    async def text(self, ws: ServerConnection, message: str) -> bool:
        """A control message; True at the end of the stream (after the last finals and done are sent). Raises
        Refused for one the stream cannot take."""
        self.check_size(len(message.encode()))
        try:
            msg = json.loads(message)
        except json.JSONDecodeError:
            raise Refused(f"text messages are JSON objects, got {message[:40]!r}") from None
        if not isinstance(msg, dict):
            raise Refused(f"text messages are JSON objects, got {message[:40]!r}")
        kind = msg.get("type")
        if kind in END_TYPES:
            await self.flush(ws, await self.server.compute(self.recognizer.finish))
            await send(ws, {"type": "done"})
            await ws.close()
            return True
        if kind in CONFIG_TYPES and ("sample_rate" in msg or "format" in msg):
            self.configure(msg)
            return False
        raise Refused(f"unknown message type {kind!r}: send {{\"type\": \"end\"}} at the end, or first "
                      "{\"sample_rate\": N, \"format\": \"s16le\"}")

    def configure(self, msg: dict) -> None:
        """The stream's declared rate and format. Raises Refused: after audio (the stream goes on as it was), or for
        a rate or format this server cannot take (closing)."""
        if self.samples:
            raise Refused("sample_rate and format are declared before the first audio; ignored")
        rate, fmt = msg.get("sample_rate", self.server.sample_rate), msg.get("format", "s16le")
        if fmt not in FORMATS:
            raise Refused(f"format {fmt!r}: this server takes {' or '.join(FORMATS)}", CloseCode.UNSUPPORTED_DATA)
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise Refused(f"sample_rate is a whole number of Hz, like {self.server.sample_rate}; got {rate!r}",
                          CloseCode.UNSUPPORTED_DATA)
        if rate != self.server.sample_rate:
            raise Refused(f"sample_rate {rate!r}: this model takes {self.server.sample_rate} Hz mono; resample the "
                          "audio before sending it", CloseCode.UNSUPPORTED_DATA)
        self.decode = PcmDecoder(PCM_FORMATS[fmt])

    async def audio(self, ws: ServerConnection, data: bytes) -> None:
        """Samples into the recognizer, and its update out. Raises Refused for bytes that are not whole samples
        (the stream goes on), too large a message or too long a session (closing)."""
        self.check_size(len(data))
        width = self.decode.frame_bytes
        if len(data) % width:  # refused whole: the decoder would keep the part sample for the next message
            raise Refused(f"a binary message of {len(data)} bytes is not whole {width}-byte samples; ignored")
        samples = self.decode(data)
        if not np.isfinite(samples).all():
            raise Refused("samples that are NaN or infinite; ignored")
        limit = self.server.limits.max_session_seconds
        room = int(limit * self.server.sample_rate) - self.samples
        if samples.size > room:  # the audio up to the limit is still heard
            if room > 0:
                self.samples += room
                await self.flush(ws, await self.server.compute(self.recognizer.accept, samples[:room]))
            raise Refused(f"a session takes at most {limit:g} s of audio (--max_session_seconds)",
                          CloseCode.POLICY_VIOLATION)
        self.samples += samples.size
        await self.flush(ws, await self.server.compute(self.recognizer.accept, samples))

    def check_size(self, size: int) -> None:
        limit = self.server.limits.max_message_bytes
        if size > limit:
            raise Refused(f"a message of {size} bytes is over the limit of {limit} (--max_message_bytes)",
                          CloseCode.MESSAGE_TOO_BIG)

    async def flush(self, ws: ServerConnection, update: StreamUpdate) -> None:
        """Sends an update: its finals in order, then the partial when it changed (a final clears it)."""
        for seg in update.finals:
            await send(ws, {"type": "final", "text": seg.text, "start": round(seg.start, 3), "end": round(seg.end, 3)})
            self.finals += 1
            self.partial = ""
        if update.partial != self.partial:  # "" too, when the text vanished without a final
            await send(ws, {"type": "partial", "text": update.partial})
        self.partial = update.partial


async def send(ws: ServerConnection, message: dict) -> None:
    await ws.send(json.dumps(message))


async def close(ws: ServerConnection, code: int, reason: str) -> None:
    """Closes with `code` and `reason` (cut to fit a close frame), reading and dropping what the client still sends
    meanwhile: unread messages would hold back its close frame, and the handshake would wait out its timeout."""

    async def drain() -> None:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass

    draining = asyncio.create_task(drain())
    await ws.close(code, reason[:120])  # a close reason is at most 123 bytes
    await draining


def run(transcriber, host: str, port: int, limits: Limits, stream: StreamSettings, threads: int = 0,
        say: Callable[[str], None] = print) -> None:
    """Serves until SIGINT or SIGTERM (a bidirectional model streams in segment mode, asr.streaming). Raises
    UserError when the address cannot be bound."""
    server = StreamServer(transcriber, limits, stream, threads)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        started = time.monotonic()

        def ready(bound: int) -> None:
            say(f"streaming on ws://{host}:{bound} ({server.sample_rate} Hz mono, s16le or f32le; "
                f"{limits.max_connections} connections at most); Ctrl-C stops it")

        await server.serve(host, port, stop, ready)
        say(f"stopped after {time.monotonic() - started:.0f} s")

    asyncio.run(main())
