"""`mlflow models serve` of the registered model is a transcription REST API: a real server on a loopback
port, real HTTP requests with real audio (a file path, base64 FLAC bytes, raw samples), per-request decoder
params, and a clear 4xx/5xx answer to bad input."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import soundfile as sf
from conftest import FILE_ID, MODEL_NAME, asr_command, run_cli, run_cli_here, served_model, split_dir, torch_threads

from asr import UserError
from asr.lm import write_lexicon
from asr.loading import load_pyfunc
from asr.metrics import cer
from asr.pyfunc import ROOTS_ENV, audio_to_base64

pytestmark = pytest.mark.slow  # mlflow models serve

URI = f"models:/{MODEL_NAME}@production"


def post(port: int, payload: dict) -> tuple[int, dict]:
    return post_raw(port, json.dumps(payload).encode())


def post_raw(port: int, data: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=data,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# the test clip is 10.4 s: three fit in one request, four do not
MAX_REQUEST = {"ASR_MAX_REQUEST_SECONDS": "30"}


@pytest.fixture(scope="module")
def allowed_root(tmp_path_factory) -> Path:
    """A folder the shared server lets requests name paths under (besides the test-clean split)."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def server(trained, allowed_root, tmp_path_factory):
    """The served model with request paths allowed under the test-clean split and `allowed_root`
    (ASR_SERVE_ALLOWED_ROOTS), shared by this module's tests (it takes a while to start); yields its port."""
    roots = os.pathsep.join([str(split_dir("test-clean")), str(allowed_root)])
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with served_model(trained, URI, log, MAX_REQUEST | {ROOTS_ENV: roots}) as port:
        yield port


@pytest.fixture
def default_server(trained, tmp_path):
    """The served model as `mlflow models serve` starts it with no setting: request paths off."""
    with served_model(trained, URI, tmp_path / "server.log", MAX_REQUEST) as port:
        yield port


def test_served_model_transcribes_real_audio_over_http(trained_store, server, allowed_root):
    flac = split_dir("test-clean") / "1089/134686/1089-134686-0000.flac"
    other = split_dir("test-clean") / "1089/134686/1089-134686-0001.flac"

    # one recording three ways (base64 FLAC bytes, a path on the server's disk in a folder it allows, raw samples
    # plus their rate): the same waveform reaches the model, so the same text comes back
    samples, rate = sf.read(flac, dtype="float32")
    texts = []
    for payload in ({"dataframe_records": [{"audio": audio_to_base64(flac)}]},
                    {"dataframe_records": [{"audio": str(flac)}]},
                    {"dataframe_split": {"columns": ["samples", "sample_rate"], "data": [[samples.tolist(), rate]]}}):
        status, body = post(server, payload)
        assert status == 200, body
        assert len(body["predictions"]) == 1
        texts.append(body["predictions"][0]["text"])
    assert texts[0] == texts[1] == texts[2] and set(texts[0]) <= set("abcdefghijklmnopqrstuvwxyz' ")

    # several rows: one transcript each, in order; what this model says in-process too (up to the near-ties
    # of a model trained for seconds, which another process's float summation order can flip)
    status, body = post(server, {"dataframe_records": [{"audio": str(other)}, {"audio": audio_to_base64(flac)}]})
    assert status == 200, body
    served = [p["text"] for p in body["predictions"]]
    with torch_threads(1):  # as the server runs (OMP_NUM_THREADS=1)
        local = mlflow.pyfunc.load_model(URI).predict(pd.DataFrame({"audio": [audio_to_base64(other),
                                                                             audio_to_base64(flac)]}))
    assert len(served) == 2 and cer(local["text"].tolist(), served) < 0.25
    alone = texts[:1]

    # per-request decoder params reach the decoder: an LM file that is not there is the error it names
    status, body = post(server, {"dataframe_records": [{"audio": str(flac)}],
                                 "params": {"decoder": "beam", "beam_size": 4}})
    assert status == 200, body
    assert len(body["predictions"]) == 1 and isinstance(body["predictions"][0]["text"], str)
    status, body = post(server, {"dataframe_records": [{"audio": str(flac)}],
                                 "params": {"lm": str(allowed_root / "no-such.arpa")}})
    assert status == 400 and "no such file" in body["message"]

    # bad input is an error answer naming the problem, and the server keeps serving
    status, body = post(server, {"dataframe_records": [{"audio": "not a file and not base64 !"}]})
    assert status == 400 and "base64" in body["message"]
    status, body = post(server, {"dataframe_records": [{"samples": [0.0] * 100}]})
    assert status == 400 and "sample_rate" in body["message"]
    status, body = post_raw(server, b'{"dataframe_records": [{"audio": ')  # not JSON
    assert 400 <= status < 500
    # one request cannot take more audio than the server allows (memory follows audio length)
    status, body = post(server, {"dataframe_records": [{"audio": str(flac)}] * 4})
    assert status == 400 and "request too long" in body["message"]
    status, body = post(server, {"dataframe_records": [{"audio": str(flac)}] * 2})
    assert status == 200 and len(body["predictions"]) == 2
    status, body = post(server, {"dataframe_records": [{"audio": audio_to_base64(flac)}]})
    assert status == 200 and [p["text"] for p in body["predictions"]] == alone


def test_every_request_shape_gives_the_same_text_as_dataframe_records(trained_store, server, allowed_root):
    """Each JSON shape MLflow's scoring server documents (dataframe_records, dataframe_split, `instances`, `inputs`
    as a list or as columns) and CSV either transcribes, with the text dataframe_records gives, or is a 400 that
    says what shape to send. Before: `{"inputs": [b64]}` answered 200 with no prediction at all, columns and
    `instances` a 400 claiming `audio` was missing, CSV a 400 from MLflow's parser."""
    flac = split_dir("test-clean") / "1089/134686/1089-134686-0000.flac"
    b64 = audio_to_base64(flac)
    status, body = post(server, {"dataframe_records": [{"audio": b64}]})
    assert status == 200 and len(body["predictions"]) == 1, body
    text = body["predictions"][0]["text"]

    failures = []
    for name, payload, expected in [
        ("inputs list", {"inputs": [b64]}, [text]),
        ("inputs columns", {"inputs": {"audio": [b64]}}, [text]),
        ("instances records", {"instances": [{"audio": b64}]}, [text]),
        ("inputs list of a path and base64", {"inputs": [str(flac), b64]}, [text, text]),
        ("inputs one path", {"inputs": str(flac)}, [text]),
        ("instances list", {"instances": [str(flac)]}, [text]),
        ("dataframe_split", {"dataframe_split": {"columns": ["audio"], "data": [[b64]]}}, [text]),
    ]:
        status, body = post(server, payload)
        got = [p["text"] for p in body.get("predictions", [])] if status == 200 else body.get("message", "")[-300:]
        if got != expected:
            failures.append(f"{name}: HTTP {status} {got!r}")
    status, body = post_raw(server, f"audio\n{flac}\n{b64}\n".encode(), "text/csv")
    if status != 200 or [p["text"] for p in body["predictions"]] != [text, text]:
        failures.append(f"CSV: HTTP {status} {str(body)[-300:]}")
    assert not failures, "\n".join(failures)

    # raw samples as columns give what they give as a record
    samples, rate = sf.read(flac, dtype="float32")
    status, body = post(server, {"dataframe_records": [{"samples": samples.tolist(), "sample_rate": rate}]})
    assert status == 200, body
    status, columns = post(server, {"inputs": {"samples": [samples.tolist()], "sample_rate": [rate]}})
    assert status == 200 and columns["predictions"] == body["predictions"], columns

    # a request with no recording in it is a 400 naming the shape to send, never zero answers to one input
    for payload in ({"inputs": [1, 2]}, {"dataframe_records": [{"wav": b64}]}, {"dataframe_records": []}):
        status, body = post(server, payload)
        assert status == 400 and '{"dataframe_records": [{"audio": ' in body["message"], (payload, status, body)
    status, body = post_raw(server, f"{flac}\n".encode(), "text/csv")  # CSV without its header line
    assert status == 400 and "no `audio` or `samples` column" in body["message"], body

    # decoder settings that can only give empty text or cannot work are a 400, in one line
    empty = allowed_root / "empty.txt"
    empty.write_text("")
    for params, expected in (({"lexicon": str(empty)}, "has no words"), ({"decoder": "nope"}, "not among greedy")):
        status, body = post(server, {"inputs": [b64], "params": params})
        assert status == 400 and expected in body["message"], (params, status, body)


def test_a_path_in_a_request_is_refused_by_default(trained_store, default_server):
    """Whoever reaches the port cannot make the server read its files: a path as `audio`, `lm` or `lexicon` is a 400
    naming the setting that allows paths, the same whether or not the file exists; the audio itself still works."""
    flac = split_dir("test-clean") / "1089/134686/1089-134686-0000.flac"
    trans = flac.with_name("1089-134686.trans.txt")  # a text file the server can read
    b64 = audio_to_base64(flac)

    def refused(audio: str, params: dict | None = None) -> str:
        """The model's line of the 400 (MLflow puts "Failed to predict data '<the request>'" before it)."""
        status, body = post(default_server, {"dataframe_records": [{"audio": audio}], "params": params or {}})
        assert status == 400, (audio[:100], params, status, body)
        return body["message"].rsplit("\nError: ", 1)[-1]

    message = refused(str(flac))
    assert message == refused(f"{flac}.missing") and "base64" in message
    messages = [message]
    for name in ("lm", "lexicon"):
        message = refused(b64, {name: str(trans)})
        assert message == refused(b64, {name: f"{trans}.missing"}) and f"`{name}`" in message
        messages.append(message)
    assert all(ROOTS_ENV in m and "\n" not in m and str(flac.parent) not in m for m in messages), messages

    samples, rate = sf.read(flac, dtype="float32")
    status, by_bytes = post(default_server, {"dataframe_records": [{"audio": b64}]})
    assert status == 200 and len(by_bytes["predictions"]) == 1, by_bytes
    status, by_samples = post(default_server, {"dataframe_records": [{"samples": samples.tolist(),
                                                                      "sample_rate": rate}]})
    assert status == 200 and by_samples == by_bytes, by_samples


def test_paths_are_read_only_under_the_allowed_roots(trained_store, server, allowed_root, tmp_path_factory):
    """With ASR_SERVE_ALLOWED_ROOTS set, a path whose real location is inside a named folder is read; `..`, a symlink
    out of the folder and a sibling folder sharing its name's prefix are refused, for `audio` and for `lexicon`."""
    flac = split_dir("test-clean") / "1089/134686/1089-134686-0000.flac"
    outside = tmp_path_factory.mktemp("outside")  # a sibling of allowed_root, in no allowed folder
    sibling = Path(f"{allowed_root}-not")
    sibling.mkdir(exist_ok=True)
    for folder in (allowed_root, outside, sibling):
        shutil.copy(flac, folder / "a.flac")
        write_lexicon(["he", "hoped", "stew"], folder / "lexicon.txt")
    status, body = post(server, {"dataframe_records": [{"audio": audio_to_base64(flac)}]})
    assert status == 200, body
    status, inside = post(server, {"dataframe_records": [{"audio": str(allowed_root / "a.flac")}]})
    assert status == 200 and inside == body, inside
    status, body = post(server, {"dataframe_records": [{"audio": audio_to_base64(flac)}],
                                 "params": {"lexicon": str(allowed_root / "lexicon.txt")}})
    assert status == 200 and set(body["predictions"][0]["text"].split()) <= {"he", "hoped", "stew"}, body

    (allowed_root / "link").symlink_to(outside, target_is_directory=True)
    escapes = [f"{allowed_root}/../{outside.name}", str(allowed_root / "link"), str(sibling)]
    for folder in escapes:
        status, body = post(server, {"dataframe_records": [{"audio": f"{folder}/a.flac"}]})
        assert status == 400 and ROOTS_ENV in body["message"], (folder, status, body)
        status, body = post(server, {"dataframe_records": [{"audio": audio_to_base64(flac)}],
                                     "params": {"lexicon": f"{folder}/lexicon.txt"}})
        assert status == 400 and ROOTS_ENV in body["message"] and "`lexicon`" in body["message"], (folder, body)


def test_the_projects_commands_read_files_without_the_setting(trained_store, tmp_path, monkeypatch):
    """`asr validate` and `asr transcribe` are trusted with any file their user can read: they pass the audio itself,
    so the serving setting never limits them; a path handed to the model's predict in-process is refused like a
    request's (predict cannot tell who calls it)."""
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    flac = split_dir("test-clean") / "1089/134686/1089-134686-0000.flac"
    proc = run_cli(asr_command() + ["validate", "--file_id", FILE_ID, "--dataset", str(split_dir("test-clean"))],
                   cwd=trained_store.root, tracking_uri=trained_store.uri)
    assert proc.returncode == 0 and any(line.startswith("predicted:") for line in proc.stdout.splitlines()), \
        proc.stderr
    # in this process (validate was a real one): the variable is unset here too
    proc = run_cli_here(["transcribe", str(flac)], cwd=trained_store.root, tracking_uri=trained_store.uri)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1, proc.stderr  # one file: its text alone
    with pytest.raises(UserError, match=ROOTS_ENV):  # the model's own copy of RequestError, a UserError
        load_pyfunc(URI).predict(pd.DataFrame({"audio": [str(flac)]}))
    monkeypatch.setenv(ROOTS_ENV, "data")  # a setting that cannot work stops the load itself (load_context), in one
    with pytest.raises(UserError, match=f"^{ROOTS_ENV} names 'data'"):  # line, what MLflow raises
        load_pyfunc(URI)
