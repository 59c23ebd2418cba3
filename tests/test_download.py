"""Tests for asr.data.download against a real HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.download import MARKER, SPLITS, DownloadError, download_split

SPLIT = "dev-clean"
UTTS = ["84-121123-0000", "84-121123-0001"]


class FakeMirror:
    """Serves in-memory files with Range support and records every request it gets."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append((self.path, self.headers.get("Range")))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_error(416)
                        return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/resources/12"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def serve(self, split: str, data: bytes) -> dict[str, str]:
        """Publish an archive and return the checksum table that matches it."""
        self.files[f"/resources/12/{split}.tar.gz"] = data
        return {split: hashlib.sha256(data).hexdigest()}


@pytest.fixture
def mirror() -> Iterator[FakeMirror]:
    server = FakeMirror()
    yield server
    server.server.shutdown()
    server.server.server_close()


def make_archive(extra: dict[str, bytes] | None = None, split: str = SPLIT) -> bytes:
    """A tiny tar.gz with the real LibriSpeech layout: LibriSpeech/<split>/<spk>/<chapter>/..."""
    files: dict[str, bytes] = {}
    for utt in UTTS:
        buf = io.BytesIO()
        sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="FLAC")
        files[f"LibriSpeech/{split}/84/121123/{utt}.flac"] = buf.getvalue()
    files[f"LibriSpeech/{split}/84/121123/84-121123.trans.txt"] = b"".join(f"{u} HELLO\n".encode() for u in UTTS)
    files.update(extra or {})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_download_verifies_and_extracts(mirror: FakeMirror, tmp_path: Path) -> None:
    sums = mirror.serve(SPLIT, make_archive())
    split_dir = download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False, checksums=sums)
    assert split_dir == tmp_path / "LibriSpeech" / SPLIT
    chapter = split_dir / "84" / "121123"
    assert sorted(p.name for p in chapter.glob("*.flac")) == [f"{u}.flac" for u in UTTS]
    assert sf.info(str(chapter / f"{UTTS[0]}.flac")).samplerate == 16000
    assert "HELLO" in (chapter / "84-121123.trans.txt").read_text()
    assert (split_dir / MARKER).is_file()
    assert (tmp_path / f"{SPLIT}.tar.gz").is_file() and not (tmp_path / f"{SPLIT}.tar.gz.part").exists()


def test_second_call_does_not_redownload(mirror: FakeMirror, tmp_path: Path) -> None:
    sums = mirror.serve(SPLIT, make_archive())
    download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False, checksums=sums)
    assert len(mirror.requests) == 1
    download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False, checksums=sums)
    assert len(mirror.requests) == 1
    # Incomplete extraction (no marker) but a verified archive: re-extract without downloading.
    (tmp_path / "LibriSpeech" / SPLIT / MARKER).unlink()
    split_dir = download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False, checksums=sums)
    assert len(mirror.requests) == 1 and (split_dir / MARKER).is_file()


def test_resumes_partial_download(mirror: FakeMirror, tmp_path: Path) -> None:
    data = make_archive()
    sums = mirror.serve(SPLIT, data)
    (tmp_path / f"{SPLIT}.tar.gz.part").write_bytes(data[:100])
    download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False, checksums=sums)
    assert mirror.requests == [(f"/resources/12/{SPLIT}.tar.gz", "bytes=100-")]
    assert (tmp_path / f"{SPLIT}.tar.gz").read_bytes() == data


def test_oversized_partial_download_restarts(mirror: FakeMirror, tmp_path: Path) -> None:
    data = make_archive()
    sums = mirror.serve(SPLIT, data)
    (tmp_path / f"{SPLIT}.tar.gz.part").write_bytes(data + b"junk")  # server answers 416
    download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False, checksums=sums)
    assert [rng for _, rng in mirror.requests] == [f"bytes={len(data) + 4}-", None]
    assert (tmp_path / f"{SPLIT}.tar.gz").read_bytes() == data


def test_checksum_mismatch_removes_download(mirror: FakeMirror, tmp_path: Path) -> None:
    actual = mirror.serve(SPLIT, make_archive())[SPLIT]
    with pytest.raises(DownloadError) as exc:
        download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False, checksums={SPLIT: "0" * 64})
    msg = str(exc.value)
    assert f"{SPLIT}.tar.gz" in msg and "0" * 64 in msg and actual in msg and "\n" not in msg
    assert not list(tmp_path.glob(f"{SPLIT}.tar.gz*"))
    assert not (tmp_path / "LibriSpeech").exists()


def test_http_404_names_url(mirror: FakeMirror, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as exc:
        download_split(SPLIT, tmp_path, mirror=mirror.url, progress=False)
    msg = str(exc.value)
    assert f"{mirror.url}/{SPLIT}.tar.gz" in msg and "404" in msg and "--mirror" in msg and "\n" not in msg
    assert str(tmp_path / f"{SPLIT}.tar.gz") in msg


def test_unreachable_host_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:  # grab a free loopback port, then close it so nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DownloadError) as exc:
        download_split(SPLIT, tmp_path, mirror=f"http://127.0.0.1:{port}/x", progress=False, timeout=5)
    assert time.monotonic() - start < 5
    msg = str(exc.value)
    assert f"http://127.0.0.1:{port}/x/{SPLIT}.tar.gz" in msg and "--mirror" in msg and "\n" not in msg


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as sock:  # listens but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        mirror = f"http://127.0.0.1:{sock.getsockname()[1]}/x"
        start = time.monotonic()
        with pytest.raises(DownloadError, match="timed out") as exc:
            download_split(SPLIT, tmp_path, mirror=mirror, progress=False, timeout=0.3)
        assert time.monotonic() - start < 3
    assert mirror in str(exc.value) and "--mirror" in str(exc.value)


def test_bad_mirror_url_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="--mirror"):
        download_split(SPLIT, tmp_path, mirror="openslr.example/12", progress=False)


def test_unknown_split_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as exc:
        download_split("dev-dirty", tmp_path, progress=False)
    assert all(name in str(exc.value) for name in SPLITS)
    assert not tmp_path.joinpath("LibriSpeech").exists()


@pytest.mark.parametrize("evil", ["../evil", "LibriSpeech/dev-clean/../../../evil"])
def test_path_traversal_is_refused(mirror: FakeMirror, tmp_path: Path, evil: str) -> None:
    root = tmp_path / "root"
    sums = mirror.serve(SPLIT, make_archive({evil: b"pwned"}))
    with pytest.raises(DownloadError, match="unsafe member"):
        download_split(SPLIT, root, mirror=mirror.url, progress=False, checksums=sums)
    assert not (tmp_path / "evil").exists()
    assert not (root / "LibriSpeech").exists()


def test_symlink_member_is_refused(mirror: FakeMirror, tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        link = tarfile.TarInfo(f"LibriSpeech/{SPLIT}/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    sums = mirror.serve(SPLIT, out.getvalue())
    with pytest.raises(DownloadError, match="unsafe member"):
        download_split(SPLIT, tmp_path / "root", mirror=mirror.url, progress=False, checksums=sums)
    assert not (tmp_path / "root" / "LibriSpeech").exists()


def test_splits_table() -> None:
    assert set(SPLITS) == {
        "dev-clean", "dev-other", "test-clean", "test-other",
        "train-clean-100", "train-clean-360", "train-other-500",
    }
    for split, (url, checksum) in SPLITS.items():
        assert url == f"https://www.openslr.org/resources/12/{split}.tar.gz"
        assert re.fullmatch(r"[0-9a-f]{64}", checksum)  # sha256
    assert len({checksum for _, checksum in SPLITS.values()}) == len(SPLITS)
