"""LibriSpeech-layout corpora: ROOT/<split>/<speaker>/<chapter>/<id>.flac + <speaker>-<chapter>.trans.txt.

Works for any split name (train-clean-100, test-clean, the demo corpus's train/dev/test) and
for any audio extension soundfile reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asr import UserError, text
from asr.atomic import atomic_path
from asr.audio import AudioError, load_audio
from asr.batching import pad_features
from asr.data.augment import WaveAugment, item_generator
from asr.features import FeatureExtractor

FILE_ID = re.compile(r"^\d+-\d+-\d+$")
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3")
# Where `validate` looks for a file id when no dataset is given: the demo corpus and downloads.
DEFAULT_SEARCH_ROOTS = ("data/demo", "data/LibriSpeech")


class DataError(UserError):
    """A dataset or file id that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Utterance:
    file_id: str
    path: Path
    transcript: str  # as written in the corpus (LibriSpeech: upper case)
    speaker: str
    chapter: str


def check_file_id(file_id: str) -> str:
    """Refuses anything but SPEAKER-CHAPTER-UTTERANCE digits, so ids can never reach outside a dataset."""
    if not FILE_ID.fullmatch(file_id or ""):
        raise DataError(f"invalid file id {file_id!r}: expected SPEAKER-CHAPTER-UTTERANCE digits, "
                        "e.g. 1089-134686-0000")
    return file_id


def _audio_path(chapter_dir: Path, file_id: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        if (p := chapter_dir / f"{file_id}{ext}").is_file():
            return p
    return None


def _read_transcripts(trans_file: Path) -> Iterator[tuple[str, str]]:
    for line in trans_file.read_text(encoding="utf-8", errors="replace").splitlines():
        file_id, _, transcript = line.strip().partition(" ")
        if file_id:
            yield file_id, transcript.strip()


def read_split(split_dir: str | Path) -> list[Utterance]:
    """All utterances of a split that have both audio and a transcript, in a stable order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"dataset folder not found: {split_dir}")
    utterances = []
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for file_id, transcript in _read_transcripts(trans):
            path = _audio_path(trans.parent, file_id)
            if path is not None and FILE_ID.fullmatch(file_id):
                speaker, chapter, _ = file_id.split("-")
                utterances.append(Utterance(file_id, path, transcript, speaker, chapter))
    if not utterances:
        raise DataError(f"no utterances found in {split_dir}: expected SPEAKER/CHAPTER/ID.flac files "
                        "with SPEAKER-CHAPTER.trans.txt transcripts")
    return utterances


def read_splits(split_dirs: Iterable[str | Path]) -> list[Utterance]:
    """The utterances of several splits, split by split (read_split's errors for a missing or empty one)."""
    return [u for d in split_dirs for u in read_split(d)]


def split_names(split_dirs: Iterable[str | Path]) -> str:
    """Short name of one or more splits, for run names: test-clean, or dev-clean+test-clean."""
    return "+".join(Path(d).name for d in split_dirs)


def _split_dirs(dataset: Path) -> list[Path]:
    """The dataset itself if it is a split, else its sub-folders (a LibriSpeech root holding several splits)."""
    if any(p.is_dir() and p.name.isdigit() for p in dataset.iterdir()):
        return [dataset]
    return sorted(p for p in dataset.iterdir() if p.is_dir())


def find_utterance(file_id: str, dataset: str | Path | None = None) -> Utterance:
    """Looks a file id up directly by its path components (no scan of the corpus)."""
    check_file_id(file_id)
    if dataset:
        roots = [Path(dataset)]
        if not roots[0].is_dir():
            raise DataError(f"dataset folder not found: {dataset}")
    else:
        roots = [Path(r) for r in DEFAULT_SEARCH_ROOTS if Path(r).is_dir()]
        if not roots:
            raise DataError("no dataset given and none found under " + ", ".join(DEFAULT_SEARCH_ROOTS)
                            + ": pass --dataset DIR (e.g. a LibriSpeech test-clean folder) or run `make demo`")
    speaker, chapter, _ = file_id.split("-")
    searched = []
    for split in (s for root in roots for s in _split_dirs(root)):
        searched.append(str(split))
        chapter_dir = split / speaker / chapter
        trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
        path = _audio_path(chapter_dir, file_id)
        for fid, transcript in _read_transcripts(trans) if trans.is_file() else ():
            if fid == file_id:
                if path is None:
                    raise DataError(f"{file_id} is in {trans} but its audio file is missing")
                return Utterance(file_id, path, transcript, speaker, chapter)
        if path is not None:  # "not found" would send the user looking for a file that is right there
            raise DataError(f"{path} has no transcript: add a line '{file_id} TEXT' to {trans}")
    raise DataError(f"file id {file_id} not found in {', '.join(searched) or dataset}")


class SpeechDataset(torch.utils.data.Dataset):
    """(features, labels) pairs.

    Without waveform augmentation, features are computed once (`precompute`) and kept in memory as fp16,
    since every epoch revisits every item. With it, each item is augmented afresh from a generator seeded by
    (seed, epoch, index), so DataLoader workers and resumed runs reproduce exactly the same batches.
    """

    def __init__(self, utterances: list[Utterance], features: FeatureExtractor, augment: WaveAugment | None = None,
                 seed: int = 0):
        self.utterances = utterances
        self.features = features
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0  # set by the training loop before each epoch's DataLoader is created
        self.labels = [text.encode(text.normalized(u.transcript)) for u in utterances]
        self._cache: list[torch.Tensor | None] = [None] * len(utterances)
        self.unreadable: list[str] = []  # why each audio file `precompute` left out could not be used

    def __len__(self) -> int:
        return len(self.utterances)

    def compute(self, i: int, augment: bool = True) -> torch.Tensor:
        wave = load_audio(self.utterances[i].path, self.features.mfcc.sample_rate)
        if augment and self.augment is not None:
            wave = self.augment(wave, item_generator(self.seed, self.epoch, i))
        return self.features(wave)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.compute(i) if self.augment is not None else self._cached(i).float()
        return feats, torch.tensor(self.labels[i], dtype=torch.long)

    def _cached(self, i: int) -> torch.Tensor:
        if self._cache[i] is None:
            self._cache[i] = self.compute(i, augment=False).to(torch.float16)
        return self._cache[i]

    def precompute(self, workers: int = 0, cache_dir: str = "", progress: bool = False, desc: str = "features"
                   ) -> list[int]:
        """Computes every item's un-augmented features (in `workers` processes, or from the on-disk cache)
        and returns their frame counts, which batching needs. Items whose audio cannot be used are left out of
        the dataset, their messages kept in `unreadable`: one corrupt file in a corpus must not stop training."""
        cache = _cache_file(cache_dir, self) if cache_dir else None
        if cache is not None and cache.is_file():
            self._cache = torch.load(cache, weights_only=True)["features"]
        missing = [i for i, f in enumerate(self._cache) if f is None]
        if missing:
            loader = torch.utils.data.DataLoader(_Featurize(self), sampler=missing, batch_size=None,
                                                 num_workers=workers, worker_init_fn=single_threaded_worker)
            failed: dict[int, str] = {}
            for i, feats in tqdm(zip(missing, loader, strict=True), total=len(missing), desc=desc, unit="utt",
                                 disable=not progress, leave=False):
                if isinstance(feats, str):
                    failed[i] = feats
                else:
                    self._cache[i] = feats
            if cache is not None:
                with atomic_path(cache) as tmp:  # two runs may cache the same split at once
                    torch.save({"file_ids": [u.file_id for u in self.utterances], "features": self._cache}, tmp)
            self._drop(failed)
        return [f.shape[-1] for f in self._cache]

    def _drop(self, failed: dict[int, str]) -> None:
        """Leaves the `failed` items out (after the cache is saved: its key covers the full list of files)."""
        if not failed:
            return
        if len(failed) == len(self.utterances):
            raise DataError(f"none of the {len(failed)} audio files can be used, e.g. {next(iter(failed.values()))}")
        self.unreadable += [failed[i] for i in sorted(failed)]
        keep = [i for i in range(len(self.utterances)) if i not in failed]
        self.utterances = [self.utterances[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        self._cache = [self._cache[i] for i in keep]


class _Featurize(torch.utils.data.Dataset):
    def __init__(self, dataset: SpeechDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        """Features, or the message of the file's AudioError: a skip for `precompute`, not a crash in a worker."""
        try:
            return self.dataset._cached(i)
        except AudioError as e:
            return str(e)


def single_threaded_worker(_: int) -> None:
    """Workers share the cores with the training step's intra-op threads: one thread each avoids
    oversubscription. Each worker gets its own process group, so Ctrl-C in a terminal or a signal to the training's
    process group reaches only the main process, which finishes its step and checkpoints before the workers stop."""
    torch.set_num_threads(1)
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cache_file(cache_dir: str, dataset: SpeechDataset) -> Path:
    """One file per (feature settings, list of audio files with their sizes and times): any change misses."""
    settings = hashlib.sha256(repr(dataset.features.settings()).encode()).hexdigest()[:16]
    files = hashlib.sha256()
    for u in dataset.utterances:
        st = u.path.stat()
        files.update(f"{u.file_id}\0{u.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Path(cache_dir) / settings / f"{files.hexdigest()[:24]}.pt"


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pads features (B, n_mfcc, T) and labels (B, L) and keeps their true lengths."""
    feats, labels = zip(*batch, strict=True)
    features, lengths = pad_features(list(feats))
    return {
        "features": features,
        "feature_lengths": lengths,
        "labels": torch.nn.utils.rnn.pad_sequence(list(labels), batch_first=True),
        "label_lengths": torch.tensor([len(lab) for lab in labels]),
    }
