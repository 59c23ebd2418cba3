"""LibriSpeech-layout corpora: ROOT/<split>/<speaker>/<chapter>/<id>.flac + <speaker>-<chapter>.trans.txt.

Works for any split name (train-clean-100, test-clean, the demo corpus's train/dev/test) and
for any audio extension soundfile reads.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from asr import UserError, text
from asr.audio import load_audio
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
        if not trans.is_file():
            continue
        for fid, transcript in _read_transcripts(trans):
            if fid == file_id:
                path = _audio_path(chapter_dir, file_id)
                if path is None:
                    raise DataError(f"{file_id} is in {trans} but its audio file is missing")
                return Utterance(file_id, path, transcript, speaker, chapter)
    raise DataError(f"file id {file_id} not found in {', '.join(searched) or dataset}")


class SpeechDataset(torch.utils.data.Dataset):
    """(features, labels) pairs; features are computed once and kept, since epochs revisit every item."""

    def __init__(self, utterances: list[Utterance], features: FeatureExtractor):
        self.utterances = utterances
        self.features = features
        self.labels = [text.encode(text.normalize(u.transcript)[0]) for u in utterances]
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self._cache:
            wave = load_audio(self.utterances[i].path, self.features.mfcc.sample_rate)
            self._cache[i] = self.features(wave).to(torch.float16)
        return self._cache[i].float(), torch.tensor(self.labels[i], dtype=torch.long)

    def frames(self, i: int) -> int:
        return self[i][0].shape[-1]


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pads features (B, n_mfcc, T) and labels (B, L) and keeps their true lengths."""
    feats, labels = zip(*batch, strict=True)
    return {
        "features": torch.nn.utils.rnn.pad_sequence([f.T for f in feats], batch_first=True).transpose(1, 2),
        "feature_lengths": torch.tensor([f.shape[-1] for f in feats]),
        "labels": torch.nn.utils.rnn.pad_sequence(list(labels), batch_first=True),
        "label_lengths": torch.tensor([len(lab) for lab in labels]),
    }


def length_sorted_batches(lengths: list[int], batch_size: int, seed: int | None) -> list[list[int]]:
    """Batches of similar-length items (little padding), in random batch order when seeded."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if seed is not None:
        random.Random(seed).shuffle(batches)
    return batches

