"""The feature store: a split's features computed once, kept on disk as shards of numpy arrays, read lazily.

Layout: ROOT/<feature settings hash>/<file list hash>/ holds, for shard k (utterances [kN, (k+1)N) of the
dataset's list, N = SHARD_UTTERANCES), `shard-0000k.npy` (fp16, shape (frames of its utterances, n_mfcc): one
utterance is one contiguous slice) and `shard-0000k.json` (file ids, offsets, frame counts, the files that could not
be read and why, which part wrote it). Both are written atomically (asr.atomic), the JSON last: a shard is complete
when its JSON exists, so a kill loses at most the shards in progress (one per process), and two writers of one
shard never leave a broken one. Shards are independent, so any number of processes or machines featurize disjoint
parts of a split (`part` i of n: shards k with k % n == i) into one folder, and re-running skips the complete
shards.

Reading takes an utterance's slice of its shard file with one positioned read (numpy.fromfile at its offset) in
the process that needs it: loader workers and ranks share the file pages through the operating system's page
cache, and a process holds the length index and the batches in flight, not the features. (Mapping the shards
instead counted every page a process had touched in its resident memory: after 100 training steps on a 100-hour
store, 700 MB per process, growing with the corpus.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from asr import UserError
from asr.atomic import atomic_path
from asr.audio import AudioError, load_audio
from asr.data.progress import progress_bar
from asr.features import FeatureExtractor

if TYPE_CHECKING:
    from asr.data.dataset import Utterance

# Utterances per shard: ~16 MB of fp16 MFCCs for LibriSpeech's 12 s average (13 coefficients, 100 frames/s), and
# 550 shards for the 281,241 utterances of the full 960 hours.
SHARD_UTTERANCES = 512
# Setting for a store-less run: every rank computes every feature up front and keeps it in its RAM.
IN_MEMORY = "memory"
FORMAT_VERSION = 2  # part of the store's key; 2: arrays in C order (an utterance is one contiguous run of bytes)


class StoreError(UserError):
    """A feature store folder that cannot be read as the dataset's features (incomplete, or another file list)."""


def shard_utterances() -> int:
    """N, utterances per shard: SHARD_UTTERANCES, or $ASR_SHARD_UTTERANCES (tests cut tiny splits into several
    shards with it). Part of the store's key: a store is never read with another N."""
    return int(os.environ.get("ASR_SHARD_UTTERANCES") or SHARD_UTTERANCES)


def default_root() -> Path:
    """$XDG_CACHE_HOME/asr/features, else ~/.cache/asr/features: outside any clone, shared by its runs."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "asr" / "features"


def store_root(setting: str) -> Path | None:
    """The root a --feature_cache setting names ('' = default_root()), or None for IN_MEMORY."""
    if setting == IN_MEMORY:
        return None
    return Path(setting).expanduser() if setting else default_root()


def store_folder(root: Path, features: FeatureExtractor, utterances: Sequence[Utterance]) -> Path:
    """The folder of a dataset's store: keyed by the feature settings, and by the list of audio files with their
    sizes and modification times (any change to a file, or another list or order, is another store)."""
    numbers = {k: float(v) for k, v in features.settings().items()}  # win_ms=25 and win_ms=25.0 are one setting
    settings = hashlib.sha256(repr(numbers).encode()).hexdigest()[:16]
    files = hashlib.sha256(f"shard {shard_utterances()} format {FORMAT_VERSION}\n".encode())
    for u in utterances:
        st = u.path.stat()
        files.update(f"{u.file_id}\0{u.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return root / settings / files.hexdigest()[:24]


def shard_count(n_utterances: int) -> int:
    return math.ceil(n_utterances / shard_utterances())


def _shard_path(folder: Path, k: int, suffix: str) -> Path:
    return folder / f"shard-{k:05d}.{suffix}"


def is_complete(folder: Path, k: int) -> bool:
    return _shard_path(folder, k, "json").is_file()


# ---------------------------------------------------------------- computing features


def single_threaded_worker(_: int) -> None:
    """Workers share the cores with the training step's intra-op threads: one thread each avoids
    oversubscription. Each worker gets its own process group, so Ctrl-C in a terminal or a signal to the training's
    process group reaches only the main process, which finishes its step and checkpoints before the workers stop."""
    torch.set_num_threads(1)
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Featurizer(torch.utils.data.Dataset):
    """Un-augmented fp16 features (n_mfcc, frames) of utterances by index, or the message of the file's AudioError:
    a skip for the caller, not a crash in a loader worker."""

    def __init__(self, utterances: Sequence[Utterance], features: FeatureExtractor):
        self.utterances, self.features = utterances, features

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        try:
            wave = load_audio(self.utterances[i].path, self.features.mfcc.sample_rate)
        except AudioError as e:
            return str(e)
        return self.features(wave).to(torch.float16)


def computed_features(utterances: Sequence[Utterance], features: FeatureExtractor, indices: Sequence[int], workers: int,
               progress: bool = False, desc: str = "features") -> Iterator[tuple[int, torch.Tensor | str]]:
    """(index, features or unreadable-file message) for `indices`, in their order, computed in `workers`
    single-threaded processes (0: in this one). The global random generator is left alone: a run must draw the same
    dropout masks whether it computed its features or found them in a store."""
    loader = torch.utils.data.DataLoader(Featurizer(utterances, features), sampler=indices, batch_size=None,
                                         num_workers=workers, worker_init_fn=single_threaded_worker,
                                         generator=torch.Generator())
    yield from progress_bar(zip(indices, loader, strict=True), total=len(indices), desc=desc, unit="utt",
                            enabled=progress, leave=False)


# ---------------------------------------------------------------- writing a store


@dataclass
class Featurized:
    """What featurizing (a part of) a split into a store did."""
    written: int = 0             # shards computed and written now
    skipped: int = 0             # shards of this part already complete
    unreadable: int = 0          # audio files of the written shards that could not be used

    def add(self, other: Featurized) -> None:
        self.written, self.skipped = self.written + other.written, self.skipped + other.skipped
        self.unreadable += other.unreadable


class ShardWriter(torch.utils.data.Dataset):
    """Task t: featurize and write shard todo[t] in whichever process gets it, and answer (its unreadable files,
    its utterances). Whole shards per task, so that processes send back two numbers, not features: handing every
    utterance's tensor to one writing process made 2 processes only 1.2x as fast as 1 (10 h here: 28.4 s vs 34.6 s)."""

    def __init__(self, utterances: Sequence[Utterance], features: FeatureExtractor, folder: Path, todo: list[int],
                 part: str):
        self.utterances, self.features, self.folder, self.todo, self.part = utterances, features, folder, todo, part

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, t: int) -> tuple[int, int]:
        k, size = self.todo[t], shard_utterances()
        utts = self.utterances[k * size:(k + 1) * size]
        compute = Featurizer(utts, self.features)
        return write_shard(self.folder, k, [(u.file_id, compute[m]) for m, u in enumerate(utts)], self.part), len(utts)


def featurize(utterances: Sequence[Utterance], features: FeatureExtractor, folder: Path,
              part: tuple[int, int] = (0, 1), workers: int = 0, progress: bool = False,
              desc: str = "features") -> Featurized:
    """Computes and writes the missing shards k of `folder` with k % n == i (`part` = (i, n)), each in one of
    `workers` single-threaded processes (0: in this one); complete shards are skipped, so a second run, or a run
    after a kill (which loses the shards in progress, one per process), computes only what is missing.
    Raises OSError (e.g. a full disk) from writing."""
    i, n = part
    mine = range(i, shard_count(len(utterances)), n)
    todo = [k for k in mine if not is_complete(folder, k)]
    done = Featurized(skipped=len(mine) - len(todo))
    if not todo:
        return done  # no processes started for nothing
    folder.mkdir(parents=True, exist_ok=True)
    tasks = ShardWriter(utterances, features, folder, todo, f"{i}/{n}")
    loader = torch.utils.data.DataLoader(tasks, batch_size=None, num_workers=min(workers, len(todo)),
                                         worker_init_fn=single_threaded_worker, generator=torch.Generator())
    size = shard_utterances()
    total = sum(len(utterances[k * size:(k + 1) * size]) for k in todo)
    with progress_bar(total=total, desc=desc, unit="utt", enabled=progress, leave=False) as bar:
        for unreadable, count in loader:
            done.unreadable += unreadable
            done.written += 1
            bar.update(count)
    return done


def write_shard(folder: Path, k: int, items: list[tuple[str, torch.Tensor | str]], part: str) -> int:
    """Writes shard k: the features (or unreadable-file messages) of its utterances, in order; the array, then the
    JSON that makes it complete. Returns how many of its files could not be read."""
    arrays = [f.T.numpy() for _, f in items if not isinstance(f, str)]
    n_mfcc = arrays[0].shape[1] if arrays else 0
    data = np.ascontiguousarray(np.concatenate(arrays)) if arrays else np.zeros((0, n_mfcc), np.float16)
    index, failed, offset = [], [], 0
    for file_id, f in items:
        if isinstance(f, str):
            failed.append({"file_id": file_id, "message": f})
            index.append([file_id, offset, -1])
        else:
            index.append([file_id, offset, f.shape[-1]])
            offset += f.shape[-1]
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(_shard_path(folder, k, "npy")) as tmp, open(tmp, "wb") as out:
        np.save(out, data)
    meta = {"version": FORMAT_VERSION, "shard": k, "part": part, "n_mfcc": n_mfcc, "frames": offset,
            "utterances": index, "failed": failed}
    with atomic_path(_shard_path(folder, k, "json")) as tmp:
        tmp.write_text(json.dumps(meta))
    return len(failed)


# ---------------------------------------------------------------- reading a store


class FeatureStore:
    """A complete store, read lazily: frame counts and unreadable files of every utterance in memory, each
    utterance's features read from its shard file when asked for."""

    def __init__(self, folder: Path, lengths: np.ndarray, offsets: np.ndarray, failed: dict[int, str]):
        self.folder = folder
        self.lengths = lengths           # frames per utterance, -1 for an unreadable file
        self.offsets = offsets           # first frame of each utterance in its shard
        self.failed = failed             # index -> why its audio file could not be used
        self._size = shard_utterances()
        self._layouts: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Utterance i's fp16 features (n_mfcc, frames), read from its shard with one positioned read."""
        start, n_mfcc = self._layout(i // self._size)
        frames = int(self.lengths[i])
        data = np.fromfile(_shard_path(self.folder, i // self._size, "npy"), np.float16, frames * n_mfcc,
                           offset=start + int(self.offsets[i]) * n_mfcc * 2)
        return torch.from_numpy(data.reshape(frames, n_mfcc)).T

    def _layout(self, k: int) -> tuple[int, int]:
        """(byte offset of the array in shard k's .npy file, n_mfcc), from its header, read once per process."""
        if k not in self._layouts:
            with open(_shard_path(self.folder, k, "npy"), "rb") as f:
                fmt = np.lib.format
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran_order, dtype = read(f)
                if dtype != np.float16 or len(shape) != 2 or fortran_order:
                    raise StoreError(f"{f.name} is not a feature shard (dtype {dtype}, shape {shape}): remove "
                                     f"{self.folder} and featurize again")
                self._layouts[k] = (f.tell(), shape[1])
        return self._layouts[k]


def open_store(folder: Path, file_ids: Sequence[str]) -> FeatureStore:
    """The store of the dataset whose utterances have `file_ids` (in order). Raises StoreError when a shard is
    missing or lists other utterances."""
    size, n = shard_utterances(), len(file_ids)
    missing = [k for k in range(shard_count(n)) if not is_complete(folder, k)]
    if missing:
        listed = ", ".join(str(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise StoreError(f"feature store {folder} is incomplete: {len(missing)} of {shard_count(n)} shards missing "
                         f"({listed}); `asr data features` with the same data and feature options completes it")
    lengths, offsets, failed = np.empty(n, np.int64), np.empty(n, np.int64), {}
    for k in range(shard_count(n)):
        meta = json.loads(_shard_path(folder, k, "json").read_text())
        ids = [row[0] for row in meta["utterances"]]
        if ids != list(file_ids[k * size:(k + 1) * size]):
            raise StoreError(f"{_shard_path(folder, k, 'json')} lists other utterances than the dataset's: remove "
                             f"{folder} and featurize again")
        offsets[k * size:k * size + len(ids)] = [row[1] for row in meta["utterances"]]
        lengths[k * size:k * size + len(ids)] = [row[2] for row in meta["utterances"]]
        by_id = {row["file_id"]: row["message"] for row in meta["failed"]}
        failed.update({k * size + j: by_id[file_id] for j, file_id in enumerate(ids) if file_id in by_id})
    return FeatureStore(folder, lengths, offsets, failed)

