"""`asr serve-stream` for real: one server process per module on a free loopback port, serving the tiny trained
model as the Production model of its store, and real `websockets` clients streaming a real LibriSpeech FLAC."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import BIN, FILE_ID, TrainedStore, free_port, split_dir, subprocess_env
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.slow  # a training run (shared), a server process

MAX_CONNECTIONS = 2
MAX_MESSAGE_BYTES = 40000    # 1.25 s of 16 kHz s16le
MAX_SESSION_SECONDS = 12     # the utterance is 10.4 s
CHUNK_SECONDS = 0.1


@dataclass
class Server:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_for_log(self, text: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.log.read_text():
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not in the server's log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    """The utterance's samples as the server receives them: 16 kHz mono s16le."""
    path = next(split_dir("test-clean").rglob(f"{FILE_ID}.flac"))
    data, rate = sf.read(str(path), dtype="int16")
    assert rate == 16000 and data.ndim == 1
    return data


@pytest.fixture(scope="module")
def expected(trained: TrainedStore, pcm: np.ndarray) -> str:
    """The transcript the streaming API gives in this process for the same model, audio and 100 ms chunks: the
    server must add nothing to it and lose nothing of it."""
    from asr import load
    from asr.streaming import StreamingRecognizer

    checkpoint = Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id / "model.pt"
    recognizer = StreamingRecognizer(load(str(checkpoint)))
    samples = pcm.astype(np.float32) / 32768
    step = int(CHUNK_SECONDS * recognizer.sample_rate)
    finals = [s for i in range(0, samples.size, step) for s in recognizer.accept(samples[i:i + step]).finals]
    finals += recognizer.finish().finals
    text = " ".join(s.text for s in finals)
    assert text.strip()
    return text


@pytest.fixture(scope="module")
def server(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`asr serve-stream` of the trained run's registered version on a free port (pinned by number: other tests
    promote other versions of the shared store to Production)."""
    log = tmp_path_factory.mktemp("stream-server") / "server.log"
    port = free_port()
    env = subprocess_env(trained.uri) | {"OMP_NUM_THREADS": "1"}
    args = [str(BIN / "asr"), "serve-stream", "--model_uri", "models:/SpeechRecognitionModel/1", "--port", str(port),
            "--max_connections", str(MAX_CONNECTIONS),
            "--max_message_bytes", str(MAX_MESSAGE_BYTES), "--max_session_seconds", str(MAX_SESSION_SECONDS),
            "--threads", "2"]
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=trained.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    served = Server(port, log)
    try:
        deadline = time.monotonic() + 120
        while f"streaming on ws://127.0.0.1:{port}" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield served
        assert proc.poll() is None, f"the server died:\n{log.read_text()[-3000:]}"
    finally:
        os.killpg(proc.pid, 15)
        try:
            assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]  # SIGTERM stops it cleanly
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)


async def send_audio(ws: ClientConnection, pcm: np.ndarray, seconds: float = CHUNK_SECONDS) -> None:
    step = int(seconds * 16000)
    for i in range(0, pcm.size, step):
        await ws.send(pcm[i:i + step].tobytes())


async def replies(ws: ClientConnection) -> list[dict]:
    """Every message the server sends until it closes the connection (whatever the close code)."""
    messages = []
    try:
        async for m in ws:
            messages.append(json.loads(m))
    except ConnectionClosed:  # a close code other than 1000 (checked by the caller)
        pass
    return messages


async def stream(url: str, pcm: np.ndarray, declare: bool = True) -> list[dict]:
    """One whole stream: the optional declaration, the audio in 100 ms chunks, the end; the server's replies."""
    async with connect(url) as ws:
        if declare:
            await ws.send(json.dumps({"sample_rate": 16000, "format": "s16le"}))
        await send_audio(ws, pcm)
        await ws.send(json.dumps({"type": "end"}))
        return await replies(ws)


def transcript(messages: list[dict]) -> str:
    """The finals' text joined; checks the stream ended with done and nothing went wrong."""
    assert messages and messages[-1] == {"type": "done"}, messages[-3:]
    assert not [m for m in messages if m["type"] == "error"]
    return " ".join(m["text"] for m in messages if m["type"] == "final")


def test_a_stream_over_the_network_gets_the_transcript_of_the_streaming_api(server: Server, pcm, expected):
    messages = asyncio.run(stream(server.url, pcm))
    assert transcript(messages) == expected
    assert {m["type"] for m in messages} <= {"partial", "final", "done"}
    assert any(m["type"] == "partial" and m["text"] for m in messages)
    finals = [m for m in messages if m["type"] == "final"]
    bounds = [x for m in finals for x in (m["start"], m["end"])]
    assert bounds == sorted(bounds) and 0 <= bounds[0] and bounds[-1] <= pcm.size / 16000 + 1e-3
    # f32le carries the same samples; a message of NaN, or of a part of a 4-byte sample, is refused and dropped
    floats = (pcm.astype(np.float32) / 32768).astype("<f4")

    async def as_floats() -> tuple[list[dict], list[dict]]:
        async with connect(server.url) as ws:
            await ws.send(json.dumps({"sample_rate": 16000, "format": "f32le"}))
            refusals = []
            for bad in (np.array([0.1, np.nan], "<f4").tobytes(), floats[:3].tobytes()[:10]):
                await ws.send(bad)
                refusals.append(json.loads(await ws.recv()))
            step = int(CHUNK_SECONDS * 16000)
            for i in range(0, floats.size, step):
                await ws.send(floats[i:i + step].tobytes())
            await ws.send(json.dumps({"type": "eof"}))
            return refusals, await replies(ws)

    refusals, messages = asyncio.run(as_floats())
    assert [m["type"] for m in refusals] == ["error", "error"]
    assert refusals[0]["message"] == "samples that are NaN or infinite; ignored"
    assert "10 bytes is not whole 4-byte samples" in refusals[1]["message"]
    assert transcript(messages) == expected


def test_bad_messages_get_errors_and_the_stream_goes_on(server: Server, pcm, expected):
    async def client() -> tuple[list[dict], list[dict]]:
        async with connect(server.url) as ws:
            errors = []
            for bad in ("not json", json.dumps([1, 2]), json.dumps({"type": "pause"}), b"\x01\x02\x03"):
                await ws.send(bad)
                errors.append(json.loads(await ws.recv()))
            await send_audio(ws, pcm)
            await ws.send(json.dumps({"sample_rate": 16000}))  # too late: the stream has started
            await ws.send(json.dumps({"type": "end"}))
            return errors, await replies(ws)

    errors, messages = asyncio.run(client())
    assert [e["type"] for e in errors] == ["error"] * 4
    assert "JSON" in errors[0]["message"] and "JSON" in errors[1]["message"]
    assert "unknown message type 'pause'" in errors[2]["message"]
    assert "3 bytes is not whole 2-byte samples" in errors[3]["message"]
    late = [m for m in messages if m["type"] == "error"]
    assert len(late) == 1 and "before the first audio" in late[0]["message"]
    assert transcript([m for m in messages if m["type"] != "error"]) == expected
    assert transcript(asyncio.run(stream(server.url, pcm, declare=False))) == expected  # the next client too


def test_refusals_close_politely_with_a_reason(server: Server, pcm, expected):
    async def closing(first: str | bytes) -> tuple[list[dict], int | None]:
        async with connect(server.url) as ws:
            await ws.send(first)
            messages = await replies(ws)
            return messages, ws.close_code

    too_big, code = asyncio.run(closing(b"\0" * (MAX_MESSAGE_BYTES + 2)))
    assert code == 1009 and too_big[0]["type"] == "error"
    assert f"over the limit of {MAX_MESSAGE_BYTES} (--max_message_bytes)" in too_big[0]["message"]
    other_rate, code = asyncio.run(closing(json.dumps({"sample_rate": 8000, "format": "s16le"})))
    assert code == 1003 and "sample_rate 8000: this model takes 16000 Hz" in other_rate[0]["message"]
    as_text, code = asyncio.run(closing(json.dumps({"sample_rate": "16000"})))
    assert code == 1003 and "sample_rate is a whole number of Hz, like 16000; got '16000'" in as_text[0]["message"]
    other_format, code = asyncio.run(closing(json.dumps({"format": "mp3"})))
    assert code == 1003 and "format 'mp3'" in other_format[0]["message"]
    assert transcript(asyncio.run(stream(server.url, pcm))) == expected


def test_a_session_over_its_length_gets_its_finals_and_is_closed(server: Server, pcm):
    async def client() -> tuple[list[dict], int | None]:
        async with connect(server.url) as ws:
            try:
                await send_audio(ws, np.concatenate([pcm, pcm]), seconds=0.7)  # 11.9 s .. 12.6 s crosses 12 s
            except ConnectionClosed:
                pass
            return await replies(ws), ws.close_code

    messages, code = asyncio.run(client())
    errors = [m for m in messages if m["type"] == "error"]
    assert code == 1008 and len(errors) == 1 and "at most 12 s of audio" in errors[0]["message"]
    assert messages[-1] == {"type": "done"} and any(m["type"] == "final" for m in messages)
    assert max(m["end"] for m in messages if m["type"] == "final") <= MAX_SESSION_SECONDS
    # the message that crossed the limit was heard up to it, not dropped whole
    server.wait_for_log(f"; {MAX_SESSION_SECONDS:.1f} s of audio")  # logged as the connection ends


def test_a_client_that_leaves_mid_stream_frees_its_place(server: Server, pcm, expected):
    async def leave() -> None:
        ws = await connect(server.url)
        await send_audio(ws, pcm[: pcm.size // 2])
        ws.transport.abort()  # gone without a close handshake, as a crashed client or a lost network

    asyncio.run(leave())
    server.wait_for_log("client left mid-stream")

    async def both() -> list[list[dict]]:  # as many streams as the server takes at once: the place was freed
        return await asyncio.gather(*(stream(server.url, pcm) for _ in range(MAX_CONNECTIONS)))

    assert [transcript(m) for m in asyncio.run(both())] == [expected] * MAX_CONNECTIONS


def test_connections_over_the_limit_are_refused(server: Server, pcm, expected):
    async def client() -> tuple[list[dict], int | None, list[dict]]:
        held = [await connect(server.url) for _ in range(MAX_CONNECTIONS)]
        await asyncio.sleep(0.2)  # the server has counted them
        async with connect(server.url) as extra:
            refused = await replies(extra)
        await held[0].close()
        await asyncio.sleep(0.2)
        served = await stream(server.url, pcm)
        for ws in held[1:]:
            await ws.close()
        return refused, extra.close_code, served

    refused, code, served = asyncio.run(client())
    assert code == 1013 and len(refused) == 1 and refused[0]["type"] == "error"
    assert "server busy" in refused[0]["message"] and "--max_connections" in refused[0]["message"]
    assert transcript(served) == expected
