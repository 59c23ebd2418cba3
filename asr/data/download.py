"""Download, verify and safely extract the LibriSpeech archives (openslr.org resource 12)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from asr import UserError
from asr.data.progress import progress_bar

DEFAULT_MIRROR = "https://www.openslr.org/resources/12"

# SHA-256 of each archive, as published in torchaudio's datasets/librispeech.py (_CHECKSUMS)
# and ml-explore/mlx-data's datasets/librispeech.py; both list identical values.
_SHA256 = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}
SPLITS: dict[str, tuple[str, str]] = {s: (f"{DEFAULT_MIRROR}/{s}.tar.gz", c) for s, c in _SHA256.items()}
CHECKSUM_ALGORITHM = "sha256"
MARKER = ".complete"  # written inside the split folder only after a full, successful extraction
_CHUNK = 1 << 20


class DownloadError(UserError):
    """A download/verify/extract failure with a one-line message telling the user what to do."""


def download_split(
    split: str,
    root: Path,
    mirror: str = DEFAULT_MIRROR,
    progress: bool = True,
    timeout: float = 30.0,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Make root/LibriSpeech/<split> available, downloading and extracting only what is missing.

    `checksums` (split -> sha256 hex) overrides the published table, so tests can serve a fake archive.
    """
    if split not in SPLITS:
        raise DownloadError(f"Unknown LibriSpeech split {split!r}; valid splits: {', '.join(SPLITS)}")
    root = Path(root)
    split_dir = root / "LibriSpeech" / split
    if (split_dir / MARKER).is_file():
        return split_dir
    table = checksums if checksums is not None else {s: c for s, (_, c) in SPLITS.items()}
    if split not in table:
        raise DownloadError(f"No checksum known for {split!r}; add it to the checksum table")
    expected = table[split].lower()
    url = f"{mirror.rstrip('/')}/{split}.tar.gz"
    archive = root / f"{split}.tar.gz"
    root.mkdir(parents=True, exist_ok=True)

    if not archive.is_file():
        part = archive.with_name(archive.name + ".part")
        _fetch(url, part, archive, timeout, progress)
        _verify(part, expected)  # verify before the rename so a bad download never looks finished
        os.replace(part, archive)
    else:
        _verify(archive, expected)

    _extract(archive, root)
    if not split_dir.is_dir():
        raise DownloadError(f"{archive} did not contain LibriSpeech/{split}/; delete it and download it again")
    (split_dir / MARKER).write_text(expected + "\n")
    return split_dir


def _fetch(url: str, part: Path, archive: Path, timeout: float, progress: bool) -> None:
    """Stream `url` into `part`, resuming a previous partial download when the server allows it."""
    offset = part.stat().st_size if part.is_file() else 0
    hint = f"pass --mirror <url> or download it manually and place it at {archive}"
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "asr-toolkit"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code != 416 or not offset:
                raise
            part.unlink()  # our partial file is not a prefix the server recognises; start over
            return _fetch(url, part, archive, timeout, progress)
        with response:
            resumed = offset > 0 and getattr(response, "status", None) == 206
            if not resumed:
                offset = 0  # server ignored the Range header: restart from scratch
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            with open(part, "ab" if resumed else "wb") as out, progress_bar(
                total=total, initial=offset, unit="B", unit_scale=True, desc=archive.name, enabled=progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise DownloadError(f"Download of {url} failed with HTTP {err.code} {err.reason}; {hint}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"Could not reach {url} ({err.reason}); {hint}") from err
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise DownloadError(f"Download of {url} failed ({type(err).__name__}: {err}); {hint}") from err


def _verify(path: Path, expected: str) -> None:
    """Delete `path` on mismatch so that a corrupt archive is never reused or extracted."""
    digest = hashlib.new(CHECKSUM_ALGORITHM)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        path.unlink()
        raise DownloadError(
            f"Checksum mismatch for {path} ({CHECKSUM_ALGORITHM} expected {expected}, got {actual}); "
            "the file was removed, run again to re-download"
        )


def _extract(archive: Path, root: Path) -> None:
    """Extract into `root`, refusing any member that could write or point outside it."""
    base = os.path.abspath(root)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                # Our own check, independent of the Python version: no absolute paths, no '..' escapes, no links.
                target = os.path.normpath(os.path.join(base, m.name))
                if os.path.commonpath([base, target]) != base or not (m.isfile() or m.isdir()):
                    raise DownloadError(
                        f"Refusing to extract {archive}: unsafe member {m.name!r}; delete the archive and "
                        "re-download it"
                    )
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: second line of defence
                tar.extractall(base, members=members, filter="data")
            else:
                tar.extractall(base, members=members)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DownloadError(f"Could not extract {archive} ({err}); delete it and download it again") from err
