"""`asr transcribe --stream` and `--mic`: live input decoded as it arrives (raw PCM through a real pipe, WAV and FLAC
bytes on stdin, a file paced at real time), each finalized segment on its own line, and every bad input refused in
one line. The model is a tiny random one (saved as a checkpoint): the tests compare the stream's text with the
offline transcript of the same model, not with the words spoken. The streaming recognizer is used through its
API only (asr.streaming: StreamingRecognizer, Segment, StreamUpdate)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import LIBRISPEECH, asr_command, subprocess_env
from stream_models import energy_detector, random_streaming_model, streaming_config

from asr.audio import AudioError, load_audio
from asr.checkpoint import save_checkpoint
from asr.cli import main
from asr.live import (
    PCM_FORMATS,
    PcmDecoder,
    Printer,
    Rechunker,
    StreamResampler,
    format_segment,
    paced,
    recognize,
    sniff,
    stream_chunks,
    to_chunks,
)
from asr.loading import load_transcriber
from asr.settings import RAW_FORMATS
from asr.streaming import Segment, StreamingRecognizer, StreamUpdate

RATE = 16000
CHUNK = RATE // 10  # --chunk_ms 100


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small random streaming model (--streaming, look-ahead 2) as a checkpoint (--model_uri takes its path): the
    recognizer runs it exactly, so what it streams is what the offline model says."""
    cfg = streaming_config()
    path = tmp_path_factory.mktemp("stream-model") / "streaming.pt"
    return save_checkpoint(path, cfg, random_streaming_model(cfg, seed=1))  # one that says several letters here


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """A streaming model that says "a" over sound and blank over silence (its segments end at pauses)."""
    t = energy_detector()
    return save_checkpoint(tmp_path_factory.mktemp("detector") / "detector.pt", t.cfg, t.model)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The shortest real test-clean utterance (2 s, 16-bit FLAC); without the shared LibriSpeech sample, the
    shortest test utterance of a small synthesized corpus."""
    from conftest import synthesized_corpus

    folder = LIBRISPEECH / "test-clean"
    if not folder.is_dir():
        folder = synthesized_corpus(tmp_path_factory) / "test"
    return min(folder.rglob("*.flac"), key=lambda p: (sf.info(str(p)).frames, p.name))


def s16le(path: Path) -> bytes:
    """The file's samples as raw s16le PCM, mono (what `ffmpeg -f s16le -ac 1` writes)."""
    data, _ = sf.read(str(path), dtype="int16", always_2d=True)
    return data[:, 0].tobytes()


def offline(model: Path, clip: Path) -> str:
    """What `asr transcribe --model_uri MODEL CLIP` prints: the greedy transcript of the whole file."""
    return load_transcriber(str(model)).transcribe([load_audio(clip)])[0]


def api_segments(model: Path, clip: Path, endpoint_ms: float = 800.0) -> list[Segment]:
    """The finals of the streaming recognizer's API fed the clip (as `asr transcribe` reads it: resampled whole)
    in 100 ms chunks, then finished."""
    recognizer = StreamingRecognizer(load_transcriber(str(model)), endpoint_ms=endpoint_ms)
    finals: list[Segment] = []
    recognize(to_chunks([load_audio(clip).numpy()], RATE, RATE, CHUNK), recognizer,
              lambda u: finals.extend(u.finals))
    return finals


def invoke(args: list[str], stdin: bytes | None = None):
    """`asr ARGS` in this process (the real command, no subprocess start-up), stdin and stdout not terminals."""
    return CliRunner().invoke(main, args, input=stdin)


def refused(result) -> str:
    """The one error line of a command that failed as a user error must (exit 1, no traceback); else fails."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ decoding pieces
def test_pcm_split_anywhere_decodes_as_the_whole():
    g = np.random.default_rng(0)
    for name in ("s16le", "s24le", "s32le", "f32le", "u8"):
        fmt = PCM_FORMATS[name]
        stereo = (g.uniform(-1, 1, (500, 2)) * (0.999 if fmt.dtype[1] != "f" else 1)).astype(np.float32)
        buf = io.BytesIO()
        sub = {"s16le": "PCM_16", "s24le": "PCM_24", "s32le": "PCM_32", "f32le": "FLOAT", "u8": "PCM_U8"}[name]
        sf.write(buf, stereo, RATE, subtype=sub, format="RAW" if name != "u8" else "WAV")
        data = buf.getvalue()[44:] if name == "u8" else buf.getvalue()
        whole = PcmDecoder(fmt, channels=2)(data)
        decode, cuts = PcmDecoder(fmt, channels=2), sorted(g.integers(0, len(data), 7))
        parts = [decode(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert decode.leftover == 0
        np.testing.assert_array_equal(np.concatenate(parts), whole)
        np.testing.assert_allclose(whole, stereo.mean(axis=1), atol=2 / fmt.scale + 1e-7, err_msg=name)
    decode = PcmDecoder(PCM_FORMATS["s16le"])
    assert decode(b"\x00\x40\x00") == pytest.approx([0.5]) and decode.leftover == 1
    assert decode(b"\xc0") == pytest.approx([-0.5]) and decode.leftover == 0
    assert set(RAW_FORMATS) <= set(PCM_FORMATS)


@pytest.mark.parametrize("orig", [44100, 8000, 22050])
def test_resampling_chunk_by_chunk_has_no_seams(orig):
    """Resampled in pieces of random sizes = resampled whole (torchaudio's result, to float rounding)."""
    import torchaudio.functional as AF

    g = np.random.default_rng(orig)
    wave = (0.3 * g.standard_normal(orig + 321)).astype(np.float32)
    resample, out, i = StreamResampler(orig, RATE), [], 0
    while i < len(wave):
        n = int(g.integers(1, 3000))
        out.append(resample(wave[i:i + n]))
        i += n
    out.append(resample.flush())
    whole = AF.resample(torch.from_numpy(wave), orig, RATE).numpy()
    assert sum(map(len, out)) == len(whole)
    np.testing.assert_allclose(np.concatenate(out), whole, atol=1e-6)


def test_chunks_have_the_asked_size_and_lose_nothing():
    rechunk = Rechunker(4)
    got = [*rechunk(np.arange(3.0)), *rechunk(np.arange(3.0, 10.0)), *rechunk.flush()]
    assert [len(c) for c in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), np.arange(10.0))


@pytest.mark.parametrize("head, kind", [(b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"), (b"fLaC\x00\x00\x00\x22", "FLAC"),
                                        (b"OggS\x00\x02", "Ogg"), (b"\x00\x00\x12\xff\xa0\x03", "raw")])
def test_the_first_bytes_tell_containers_from_raw_pcm(head, kind):
    assert sniff(head) == kind


@pytest.mark.parametrize("head, says", [(b"", "no audio, the input is empty"), (b"hello world\n", "this is text"),
                                        (b"\x89PNG\r\n\x1a\n", "this is a PNG image"),
                                        (b"%PDF-1.7", "this is a PDF document"),
                                        (b"RIFF\x00\x10\x00\x00AVI LIST", "this is a RIFF file of kind b'AVI '")])
def test_what_is_not_audio_is_named(head, says):
    with pytest.raises(AudioError, match=f"^stdin: {says}"):
        sniff(head)


@pytest.mark.parametrize("subtype, rate, channels", [("PCM_16", 16000, 1), ("PCM_24", 44100, 2),
                                                     ("FLOAT", 8000, 1)])
def test_a_wav_on_stdin_is_decoded_as_it_arrives_like_the_file(tmp_path, subtype, rate, channels):
    """Its header is read from the pipe and its samples decoded a chunk at a time: the samples `asr transcribe`
    reads from the file (soundfile, resampled whole), without the file's length known in advance."""
    t = np.arange(int(1.3 * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * 330 * t) * np.sin(2 * np.pi * 1.5 * t)
    path = tmp_path / "in.wav"
    sf.write(path, np.repeat(wave[:, None], channels, axis=1), rate, subtype=subtype)
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = b"\xff\xff\xff\xff"  # length unknown, as a writer to a pipe leaves it
    stdin = io.BytesIO(bytes(data))
    said: list[str] = []
    head = stdin.read(12)
    chunks = list(stream_chunks(stdin, sniff(head), head, RATE, CHUNK, "s16le", RATE, said.append))
    expected = load_audio(path, RATE).numpy()
    assert said == [] and {len(c) for c in chunks[:-1]} == {CHUNK}
    np.testing.assert_allclose(np.concatenate(chunks), expected, atol=1e-5)


def test_pacing_gives_each_chunk_once_it_would_have_been_recorded():
    chunks = [np.zeros(CHUNK, np.float32)] * 5  # 0.5 s
    start, times = time.monotonic(), []
    for _ in paced(chunks, RATE):
        times.append(time.monotonic() - start)
    assert all(t >= 0.1 * (k + 1) - 0.005 for k, t in enumerate(times)), times  # never early (late only under load)


# ---------------------------------------------------------------------------------------------------- output
def test_a_segment_line_has_one_fixed_format():
    assert format_segment(Segment("hello there", 12.34, 15.1)) == "[  12.34 -   15.10] hello there"
    assert format_segment(Segment("", 0.0, 1234.5)) == "[   0.00 - 1234.50] "


def test_partials_refresh_one_line_only_on_a_terminal():
    updates = [StreamUpdate("he", ()), StreamUpdate("hel", ()), StreamUpdate("", (Segment("hello", 0.5, 1.25),)),
               StreamUpdate("wor", ()), StreamUpdate("", (Segment("world", 2, 3),))]
    outputs = {}
    for tty in (True, False):
        out = io.StringIO()
        printer = Printer(out, json_lines=False, partials=False, tty=tty)
        for u in updates:
            printer(u)
        printer.close()
        outputs[tty] = out.getvalue()
    assert outputs[False] == "[   0.50 -    1.25] hello\n[   2.00 -    3.00] world\n"
    assert outputs[True] == ("\r\x1b[Khe\r\x1b[Khel\r\x1b[K[   0.50 -    1.25] hello\n\r\x1b[Kwor\r\x1b[K"
                             "[   2.00 -    3.00] world\n")
    for partials in (False, True):
        out = io.StringIO()
        printer = Printer(out, json_lines=True, partials=partials, tty=True)
        for u in updates:
            printer(u)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        finals = [x for x in lines if "text" in x]
        assert finals == [{"start": 0.5, "end": 1.25, "text": "hello"}, {"start": 2, "end": 3, "text": "world"}]
        assert [x["partial"] for x in lines if "partial" in x] == (["he", "hel", "", "wor", ""] if partials else [])


# ----------------------------------------------------------------------------------------- the command line
@pytest.mark.slow
def test_raw_pcm_through_a_real_pipe_gives_the_offline_transcript(model, clip, tmp_path):
    """`... | asr transcribe --stream -`: the segments printed are the API's, and one segment's text is the
    offline transcript of the whole file."""
    args = [*asr_command(), "transcribe", "--stream", "-", "--model_uri", str(model), "--endpoint_ms", "5000"]
    proc = subprocess.run([*args, "--json", "--partials"], input=s16le(clip), cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    partials = [x["partial"] for x in lines if "partial" in x]
    assert len({p for p in partials if p}) >= 2  # the open segment's text changed as audio came
    segments = api_segments(model, clip, endpoint_ms=5000)
    assert [x for x in lines if "text" in x] == [{"start": round(s.start, 3), "end": round(s.end, 3),
                                                 "text": s.text} for s in segments]
    assert " ".join(s.text for s in segments) == offline(model, clip) != ""
    proc = subprocess.run(args, input=s16le(clip), cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          timeout=120)
    assert proc.stdout.decode().splitlines() == [format_segment(s) for s in segments]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg binary here")
def test_ffmpeg_decoding_into_the_pipe(model, clip, tmp_path):
    command = (f"ffmpeg -loglevel error -i {clip} -f s16le -ac 1 -ar 16000 - | {' '.join(asr_command())} "
               f"transcribe --stream - --model_uri {model} --endpoint_ms 5000 --json")
    proc = subprocess.run(command, shell=True, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert " ".join(x["text"] for x in lines) == offline(model, clip)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_wav_and_flac_bytes_on_stdin(model, clip, fmt, tmp_path):
    """A WAV at 44.1 kHz streams as it arrives; a FLAC is decoded at the end of the input, which it says in one
    line on stderr; both resampled to the model's rate, and their segments are the API's."""
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, load_audio(clip, 44100).numpy(), 44100, subtype="PCM_16")
    result = invoke(["transcribe", "--stream", "-", "--model_uri", str(model), "--json"], stdin=path.read_bytes())
    assert result.exit_code == 0, result.output
    if fmt == "FLAC":
        assert result.stderr.startswith("stdin: FLAC cannot be decoded as it arrives") and \
            result.stderr.count("\n") == 1 and "-f s16le" in result.stderr
    else:
        assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(set(x) == {"start", "end", "text"} for x in lines)
    assert lines == [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                     for s in api_segments(model, path)]
    assert all(0 <= x["start"] < x["end"] <= sf.info(str(path)).duration for x in lines), lines


@pytest.mark.slow
def test_a_pause_ends_a_segment_and_the_next_one_is_timed_from_the_start(detector, clip, tmp_path):
    """Utterance, 1.5 s of silence, utterance: a line per segment, as the API finalizes them, the second starting
    after the pause."""
    wave = load_audio(clip).numpy()
    path = tmp_path / "two.wav"
    sf.write(path, np.concatenate([wave, np.zeros(int(1.5 * RATE), np.float32), wave]), RATE, subtype="PCM_16")
    result = invoke(["transcribe", "--stream", "-", "--model_uri", str(detector)], stdin=s16le(path))
    assert result.exit_code == 0, result.output
    segments = api_segments(detector, path)
    assert len(segments) >= 2 and segments[-1].start >= len(wave) / RATE + 1.5 - 0.3, segments
    assert result.stdout.splitlines() == [format_segment(s) for s in segments]


@pytest.mark.slow
def test_realtime_takes_at_least_the_audio_duration(model, clip, tmp_path):
    one_second = tmp_path / "one-second.wav"
    sf.write(one_second, load_audio(clip).numpy()[:RATE], RATE)
    for realtime in (["--realtime"], []):
        start = time.monotonic()
        result = invoke(["transcribe", "--stream", str(one_second), "--model_uri", str(model), *realtime])
        elapsed = time.monotonic() - start
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("[   0.") and result.stdout.count("\n") >= 1
        if realtime:
            assert elapsed >= 1.0, elapsed
            paced_output = result.stdout
        else:
            assert result.stdout == paced_output  # pacing changes when, not what


@pytest.mark.parametrize("args, stdin, says", [
    (["a.wav", "b.wav"], None, "--stream takes one input"),
    ([], None, "--stream needs an input"),
    (["-", "--realtime"], b"\x00\x01", "--realtime needs --stream FILE: it paces a file"),
    (["-"], b"", "stdin: no audio, the input is empty"),
    (["-"], b"Traceback (most recent call last):\n", "stdin: this is text, not audio"),
    (["-"], b"\x89PNG\r\n\x1a\n" + bytes(100), "stdin: this is a PNG image"),
    (["no-such.flac"], None, "no-such.flac: no such file"),
])
def test_bad_input_is_refused_in_one_line_before_the_model_loads(args, stdin, says):
    line = refused(invoke(["transcribe", "--stream", *args, "--model_uri", "no-such-model.pt"], stdin=stdin))
    assert line.startswith(f"Error: {says}"), line


def test_options_that_need_stream_say_so():
    assert refused(invoke(["transcribe", "x.wav", "--realtime"])) == \
        "Error: --realtime needs --stream FILE: it paces a file; stdin and the microphone arrive at their own pace"
    for option in (["--chunk_ms", "20"], ["--endpoint_ms", "300"], ["--partials"]):
        line = refused(invoke(["transcribe", "x.wav", *option]))  # ignored options are refused, not dropped
        assert line == f"Error: {option[0]} needs --stream (or --mic)", line
    line = refused(invoke(["transcribe", "--stream", "-", "--partials"], stdin=b"\x00\x01"))
    assert line.startswith("Error: --partials prints JSON lines: give --json too"), line
    assert refused(invoke(["transcribe", "--mic", "x.wav"])).startswith("Error: --mic captures from the microphone")
    line = refused(invoke(["transcribe", "-", "--model_uri", "no-such-model.pt"], stdin=bytes(64)))
    assert line == "Error: - (stdin) is read as it arrives: give --stream - (raw PCM, WAV or FLAC bytes on stdin)"
    assert invoke(["transcribe"]).exit_code == 2  # no files, no --stream: click's usage error, as before


RAW_NEEDS = "needs --stream - (raw PCM on stdin): an audio file or the microphone says its own format and rate"


@pytest.mark.parametrize("args, says", [
    (["x.wav", "--raw_rate", "8000"], f"--raw_rate {RAW_NEEDS}"),
    (["--stream", "x.wav", "--raw_format", "f32le"], f"--raw_format {RAW_NEEDS}"),
    (["--stream", "x.wav", "--raw_rate", "8000"], f"--raw_rate {RAW_NEEDS}"),
    (["--mic", "--raw_rate", "44100"], f"--raw_rate {RAW_NEEDS}"),
    (["--mic", "--realtime"], "--realtime needs --stream FILE: it paces a file"),
    (["--stream", "x.wav", "--chunk_seconds", "5"], "--chunk_seconds cuts whole files into pieces: leave it out with "
                                                    "--stream or --mic, whose audio comes in --chunk_ms pieces"),
    (["--mic", "--chunk_seconds", "5"], "--chunk_seconds cuts whole files into pieces"),
])
def test_options_the_input_would_ignore_are_refused_before_anything_is_read(args, says):
    """The file (x.wav) need not exist, nor the model, nor a microphone: the options are checked first."""
    line = refused(invoke(["transcribe", *args, "--model_uri", "no-such-model.pt"]))
    assert line.startswith(f"Error: {says}"), line


def test_raw_pcm_on_stdin_still_takes_its_format_and_rate():
    line = refused(invoke(["transcribe", "--stream", "-", "--raw_format", "f32le", "--raw_rate", "8000",
                           "--model_uri", "no-such-model.pt"], stdin=bytes(64)))
    assert line.startswith("Error: no-such-model.pt: not a checkpoint"), line  # past the options, at the model


def test_mic_where_it_cannot_work_says_what_is_missing_in_one_line():
    """sounddevice comes with the lock; what this machine lacks (PortAudio, or a microphone) is named before any
    model loads (the model named here does not exist)."""
    import importlib.util

    line = refused(invoke(["transcribe", "--mic", "--model_uri", "no-such-model.pt"]))
    if importlib.util.find_spec("sounddevice") is None:
        assert "pip install sounddevice" in line
    else:
        assert line.startswith(("Error: --mic: sounddevice cannot load PortAudio", "Error: --mic: no microphone")), line


def test_serve_stream_on_a_taken_port_says_so_before_the_model_loads():
    """The model named does not exist: its error would come first if the model loaded before the port was tried."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(invoke(["serve-stream", "--port", str(port), "--model_uri", "no-such-model.pt"]))
    assert line.startswith(f"Error: cannot listen on 127.0.0.1:{port}: "), line
    assert line.endswith("stop what listens there, or give another --port (0 = any free one)"), line


def test_serve_stream_on_an_address_not_of_this_machine_says_so_before_the_model_loads():
    # TEST-NET-1, never assigned (a host name nothing resolves is said the same way, but may wait on DNS)
    line = refused(invoke(["serve-stream", "--host", "192.0.2.1", "--model_uri", "no-such-model.pt"]))
    assert line.startswith("Error: cannot listen on 192.0.2.1:8765: "), line
    assert line.endswith("give --host an address of this machine (127.0.0.1, or 0.0.0.0 for all its interfaces)"), line


def test_the_address_check_leaves_the_port_free():
    from asr.listening import check_address

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_address("127.0.0.1", port)
    with socket.socket() as server:  # what the server then binds, as asyncio does
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()


@pytest.mark.slow
def test_a_stream_cut_inside_a_sample_keeps_what_was_heard_and_fails(model, clip):
    result = invoke(["transcribe", "--stream", "-", "--model_uri", str(model), "--endpoint_ms", "5000"],
                    stdin=s16le(clip) + b"\x01")
    line = refused(result)
    assert "ended 1 byte into a 2-byte s16le frame" in line
    assert result.stdout.splitlines() == [format_segment(s) for s in api_segments(model, clip, 5000)]


def test_samples_that_are_not_finite_on_stdin_are_refused_in_one_line(model, tmp_path):
    wave = np.zeros(RATE, np.float32)
    wave[RATE // 2] = np.nan
    raw = invoke(["transcribe", "--stream", "-", "--model_uri", str(model), "--raw_format", "f32le"],
                 stdin=wave.astype("<f4").tobytes())
    assert refused(raw) == "Error: stdin: 1 sample not finite (NaN or infinite); the audio is corrupt"
    path = tmp_path / "nan.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    wav = invoke(["transcribe", "--stream", "-", "--model_uri", str(model)], stdin=path.read_bytes())
    assert refused(wav) == "Error: stdin: 1 sample not finite (NaN or infinite); the audio is corrupt"


def bad_file(kind: str, clip: Path, folder: Path) -> Path:
    """A file of the `kind` asr.audio refuses, written in `folder`."""
    path = folder / ("bad.flac" if kind in ("not audio", "truncated") else "bad.wav")
    if kind == "empty":
        sf.write(path, np.zeros(0, np.float32), RATE)
    elif kind == "not audio":
        path.write_text("a transcript, not audio\n")
    elif kind == "truncated":
        data = clip.read_bytes()
        path.write_bytes(data[: len(data) // 3])  # an interrupted copy: the decoder loses sync part-way
    else:
        wave = np.zeros(RATE, np.float32)
        wave[[10, 20]] = np.nan
        sf.write(path, wave, RATE, subtype="FLOAT")
    return path


@pytest.mark.parametrize("kind, says", [("empty", "audio is too short (0.000 s"),
                                        ("not audio", "cannot read audio, the file is corrupt, truncated or not audio"),
                                        ("truncated", "cannot read audio, the file is corrupt, truncated or not audio"),
                                        ("not finite", "2 samples not finite (NaN or infinite)")])
def test_a_bad_file_streamed_is_refused_as_it_is_offline(model, clip, tmp_path, kind, says):
    """`--stream FILE` opens and reads a file with asr.audio's checks (open_audio, read_blocks, check_finite): the
    one line `asr transcribe FILE` says. An empty file, or one that is not audio, is refused before the model
    loads (the model named then does not exist)."""
    path = bad_file(kind, clip, tmp_path)
    offline_line = refused(invoke(["transcribe", str(path), "--model_uri", str(model)]))
    assert offline_line.startswith(f"Error: {path}: {says}"), offline_line
    assert refused(invoke(["transcribe", "--stream", str(path), "--model_uri", str(model)])) == offline_line
    if kind in ("empty", "not audio"):
        assert refused(invoke(["transcribe", "--stream", str(path), "--model_uri", "no-such-model.pt"])) == \
            offline_line


def test_a_container_that_is_not_audio_inside(model):
    line = refused(invoke(["transcribe", "--stream", "-", "--model_uri", str(model)], stdin=b"fLaC" + bytes(200)))
    assert line.startswith("Error: stdin: cannot read audio"), line


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_prints_the_open_segment_and_exits_0(model, clip, tmp_path, stop):
    """As `--mic` stops: SIGINT (Ctrl-C), or SIGTERM (kill, a service stop), while the input is still open
    finalizes what was heard."""
    args = [*asr_command(), "transcribe", "--stream", "-", "--model_uri", str(model), "--json", "--partials",
            "--endpoint_ms", "5000"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, env=subprocess_env())
    try:
        proc.stdin.write(s16le(clip))
        proc.stdin.flush()  # and left open: more audio could come
        first = json.loads(proc.stdout.readline())  # a partial: the audio is being recognized
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "partial" in first
    lines = [json.loads(line) for line in out.decode().splitlines()]
    finals = [x for x in lines if "text" in x]
    assert proc.returncode == 0 and err == b"", err
    assert len(finals) == 1 and finals[0]["text"] and finals[0]["end"] <= sf.info(str(clip)).duration + 0.01
