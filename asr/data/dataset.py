"""LibriSpeech-layout corpora: ROOT/<split>/<speaker>/<chapter>/<id>.flac + <speaker>-<chapter>.trans.txt.

Works for any split name (train-clean-100, test-clean, the demo corpus's train/dev/test) and for the audio formats
soundfile reads, extensions in any case. Transcript files are read as editors write them (a byte order mark, UTF-16,
CRLF, tabs or runs of spaces after the id); every line or audio file that still cannot become an utterance is
left out with its reason (`LeftOut`), which training, `evaluate` and `validate` report: a corpus never shrinks
unseen.
"""

from __future__ import annotations

import array
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from asr import UserError
from asr.audio import load_audio
from asr.batching import pad_features
from asr.data.augment import WaveAugment, item_generator
from asr.data.feature_store import FeatureStore, computed_features
from asr.features import FeatureExtractor
from asr.settings import FILE_ID, file_id_problem
from asr.text import ENGLISH_TEXT, TextCounts, TextNormalizer, not_utf8_at

# Audio file extensions the reader takes, any case; the first ones win when an id has several files.
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".caf", ".w64")
# Where `validate` looks for a file id when no dataset is given: the demo corpus and downloads.
DEFAULT_SEARCH_ROOTS = ("data/demo", "data/LibriSpeech")
# Why the reader left an audio file or transcript line out of the utterances (keys of the `left_out_*` counts).
LEFT_OUT_REASONS = {
    "no_audio": "transcript lines without an audio file",
    "no_transcript": "audio files without a transcript line",
    "unsupported_audio": "transcript lines whose audio is in a format the reader does not take",
    "invalid_id": "lines or audio files not named by a SPEAKER-CHAPTER-UTTERANCE id",
    "wrong_chapter": "transcript lines whose id belongs to another chapter folder",
    "duplicate": "second lines or audio files of an id already read",
    "not_utf8": "transcript lines that are not UTF-8 text",
}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DataError(UserError):
    """A dataset or file id that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Utterance:
    file_id: str
    path: Path
    transcript: str  # as written in the corpus (LibriSpeech: upper case)
    speaker: str
    chapter: str


@dataclass(frozen=True)
class LeftOut:
    """An audio file or transcript line the reader did not make an utterance of: counted and reported, since
    a corpus that silently shrinks gives scores that cannot be compared."""
    reason: str      # a key of LEFT_OUT_REASONS
    where: str       # the file, and the line for a transcript line
    file_id: str     # the id it is about ('' when it has none)
    message: str     # one line: where, what is wrong and what to do

    def __str__(self) -> str:
        return self.message


@dataclass
class CorpusReading:
    """What the reader made of one or more splits: the utterances, and everything it left out and why."""
    utterances: list[Utterance]
    left_out: list[LeftOut]

    def counts(self) -> dict[str, int]:
        """`left_out_<reason>` counts, every reason present (zeros too), for MLflow metrics."""
        counts = dict.fromkeys(LEFT_OUT_REASONS, 0)
        for item in self.left_out:
            counts[item.reason] += 1
        return {f"left_out_{k}": v for k, v in counts.items()}


def check_file_id(file_id: str) -> str:
    """Refuses anything but SPEAKER-CHAPTER-UTTERANCE digits, so ids can never reach outside a dataset."""
    if problem := file_id_problem(file_id):
        raise DataError(f"{file_id!r}: {problem}")
    return file_id


def _transcript_lines(trans_file: Path) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, text or None when the line is not UTF-8, raw bytes) of a transcript file's non-blank lines.
    A UTF-8 byte order mark (Windows editors write one) is not part of the first id; UTF-16 files (Notepad's
    "Unicode") are read as such; CRLF and CR line ends are line ends."""
    raw = trans_file.read_bytes()
    if raw.startswith(_UTF16_BOMS):
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            pass  # then every line fails as UTF-8 below and is reported
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8").lstrip("\ufeff")  # at the start of the file, or of a file appended to it
        except UnicodeDecodeError:
            yield number, None, line
            continue
        if text.strip():
            yield number, text, line


def _not_utf8(trans: Path, number: int, line: bytes) -> LeftOut:
    at = not_utf8_at(line) or ""
    words = line.split(maxsplit=1)
    file_id = words[0].decode("ascii", "replace") if words else ""
    file_id = file_id if FILE_ID.fullmatch(file_id) else ""
    return LeftOut("not_utf8", f"{trans} line {number}", file_id,
                   f"{trans} line {number}{f' ({file_id})' * bool(file_id)}: not UTF-8 text{at}: save the file "
                   "as UTF-8")


def _audio_files(chapter_dir: Path, names: list[str]
                 ) -> tuple[dict[str, Path], dict[str, list[Path]], list[LeftOut]]:
    """The audio file of each id (extensions in any case; the first of AUDIO_EXTENSIONS when an id has several),
    the files named after an id with an extension the reader does not take, and the audio files left out."""
    audio: dict[str, Path] = {}
    others: dict[str, list[Path]] = {}
    left_out: list[LeftOut] = []
    rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
    for name in sorted(names, key=lambda n: (os.path.splitext(n)[0], rank.get(os.path.splitext(n)[1].lower(), 99))):
        stem, ext = os.path.splitext(name)
        path = chapter_dir / name
        if ext.lower() not in rank:
            if FILE_ID.fullmatch(stem):
                others.setdefault(stem, []).append(path)
        elif not FILE_ID.fullmatch(stem):
            left_out.append(LeftOut("invalid_id", str(path), "", f"{path}: the audio file's name is not a "
                                    "SPEAKER-CHAPTER-UTTERANCE id (e.g. 1089-134686-0000.flac)"))
        elif stem in audio:
            left_out.append(LeftOut("duplicate", str(path), stem, f"{path}: another audio file of {stem} "
                                    f"is used ({audio[stem].name})"))
        else:
            audio[stem] = path
    return audio, others, left_out


def read_chapter(chapter_dir: Path) -> CorpusReading:
    """The utterances of one SPEAKER/CHAPTER folder: every `*.trans.txt` line whose id has an audio file next to
    it, in file and line order; every other line and audio file is left out with its reason. Hidden files
    (macOS `._*` companions) and sub-folders are not part of the corpus."""
    speaker, chapter = chapter_dir.parent.name, chapter_dir.name
    names = sorted(e.name for e in os.scandir(chapter_dir) if not e.name.startswith(".") and not e.is_dir())
    trans_files = [chapter_dir / n for n in names if n.endswith(".trans.txt")]
    audio, others, left_out = _audio_files(chapter_dir, [n for n in names if not n.endswith(".trans.txt")])
    expected_trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
    utterances: list[Utterance] = []
    seen: dict[str, str] = {}            # id -> where its line is
    for trans in trans_files:
        for number, line, raw in _transcript_lines(trans):
            where = f"{trans} line {number}"
            if line is None:
                left_out.append(item := _not_utf8(trans, number, raw))
                seen.setdefault(item.file_id, where)  # its audio is part of the same problem: reported once
                continue
            words = line.split(maxsplit=1)
            file_id, transcript = words[0], (words[1].strip() if len(words) > 1 else "")
            if not FILE_ID.fullmatch(file_id):
                left_out.append(LeftOut("invalid_id", where, "", f"{where}: {file_id[:40]!r} is not a "
                                        "SPEAKER-CHAPTER-UTTERANCE id: each line must be '<id> TEXT'"))
            elif file_id.rsplit("-", 1)[0] != f"{speaker}-{chapter}":
                s, c, _ = file_id.split("-")
                left_out.append(LeftOut("wrong_chapter", where, file_id, f"{where}: {file_id} is not of chapter "
                                        f"{speaker}-{chapter}: move its line to {s}/{c}/{s}-{c}.trans.txt and its "
                                        f"audio to {s}/{c}/"))
                audio.pop(file_id, None)  # its audio (if here) is part of the same mistake: reported once
            elif file_id in seen:
                left_out.append(LeftOut("duplicate", where, file_id, f"{where}: {file_id} already has a "
                                        f"line ({seen[file_id]})"))
            elif file_id not in audio:
                seen[file_id] = where
                if file_id in others:
                    found = ", ".join(p.name for p in others[file_id])
                    left_out.append(LeftOut("unsupported_audio", where, file_id, f"{where}: {file_id}'s audio "
                                            f"({found}) is not in a format the reader takes "
                                            f"({' '.join(AUDIO_EXTENSIONS)}): convert it, e.g. to FLAC"))
                else:
                    left_out.append(LeftOut("no_audio", where, file_id, f"{file_id} is in {trans} (line "
                                            f"{number}) but its audio file is missing: expected "
                                            f"{chapter_dir / file_id}.flac"))
            else:
                seen[file_id] = where
                utterances.append(Utterance(file_id, audio[file_id], transcript, speaker, chapter))
    for file_id, path in audio.items():
        if file_id not in seen:
            trans = trans_files[0] if trans_files else expected_trans
            left_out.append(LeftOut("no_transcript", str(path), file_id,
                                    f"{path} has no transcript: add a line '{file_id} TEXT' to {trans}"))
    return CorpusReading(utterances, left_out)


def left_out_lines(left_out: Iterable[LeftOut], per_reason: int = 10) -> list[str]:
    """Each left-out item's message, at most `per_reason` of each reason and then how many more of it: a corpus
    trimmed to a subset of its audio can leave out thousands of transcript lines, all for the same reason."""
    shown: dict[str, int] = {}
    lines, more = [], dict.fromkeys(LEFT_OUT_REASONS, 0)
    for item in left_out:
        if shown.get(item.reason, 0) < per_reason:
            shown[item.reason] = shown.get(item.reason, 0) + 1
            lines.append(f"left out {item}")
        else:
            more[item.reason] += 1
    return lines + [f"left out {n} more {LEFT_OUT_REASONS[r]}" for r, n in more.items() if n]


def _read_one_split(split_dir: Path) -> CorpusReading:
    if not split_dir.is_dir():
        raise DataError(f"dataset folder not found: {split_dir}")
    chapters = sorted(p for p in split_dir.glob("*/*") if p.is_dir() and not p.name.startswith(".")
                      and not p.parent.name.startswith("."))
    reading = CorpusReading([], [])
    for chapter_dir in chapters:
        part = read_chapter(chapter_dir)
        reading.utterances += part.utterances
        reading.left_out += part.left_out
    if not reading.utterances:
        why = f"; {len(reading.left_out)} left out, e.g. {reading.left_out[0]}" if reading.left_out else ""
        raise DataError(f"no utterances found in {split_dir}: expected SPEAKER/CHAPTER/ID.flac files "
                        f"with SPEAKER-CHAPTER.trans.txt transcripts{why}")
    return reading


def read_corpus(split_dirs: Iterable[str | Path]) -> CorpusReading:
    """The utterances of one or more splits, split by split in a stable order, and what was left out and why.
    An id read twice (the same split named twice, or overlapping splits) counts once: the first copy is kept.
    Raises DataError for a missing split, or one with no utterances at all."""
    reading = CorpusReading([], [])
    first: dict[str, Path] = {}
    for split_dir in split_dirs:
        part = _read_one_split(Path(split_dir))
        for u in part.utterances:
            if u.file_id in first:
                reading.left_out.append(LeftOut("duplicate", str(u.path), u.file_id, f"{u.path}: {u.file_id} is "
                                                f"already read from {first[u.file_id]}"))
            else:
                first[u.file_id] = u.path
                reading.utterances.append(u)
        reading.left_out += part.left_out
    return reading


def read_split(split_dir: str | Path) -> list[Utterance]:
    """All utterances of a split that have both audio and a transcript, in a stable order (read_corpus without
    the account of what was left out)."""
    return read_corpus([split_dir]).utterances


def read_splits(split_dirs: Iterable[str | Path]) -> list[Utterance]:
    """The utterances of several splits, split by split (read_split's errors for a missing or empty one)."""
    return read_corpus(split_dirs).utterances


def split_digest(utterances: Iterable[Utterance]) -> str:
    """A short fingerprint of a split's content: its file ids and transcripts (as the corpus writes them), in id
    order. Two runs scored on splits with the same digest were scored on the same utterances and references, so
    their WER/CER compare; the audio is not read (a split of hours hashes in milliseconds). 16 hex digits: the
    digest of the run's MLflow dataset input, and a registry tag value."""
    h = hashlib.sha256()
    for u in sorted(utterances, key=lambda u: u.file_id):
        h.update(f"{u.file_id}\t{u.transcript}\n".encode())
    return h.hexdigest()[:16]


def split_names(split_dirs: Iterable[str | Path]) -> str:
    """Short name of one or more splits, for run names: test-clean, or dev-clean+test-clean."""
    return "+".join(Path(d).name for d in split_dirs)


def _split_dirs(dataset: Path) -> list[Path]:
    """The dataset itself if it is a split, else its sub-folders (a LibriSpeech root holding several splits)."""
    if any(p.is_dir() and p.name.isdigit() for p in dataset.iterdir()):
        return [dataset]
    return sorted(p for p in dataset.iterdir() if p.is_dir())


def find_utterance(file_id: str, dataset: str | Path | None = None) -> Utterance:
    """Looks a file id up directly in its chapter folder (no scan of the corpus), read as read_split reads it;
    when the reader left the id out, the error is the reason it did."""
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
        if not chapter_dir.is_dir():
            continue
        reading = read_chapter(chapter_dir)
        for u in reading.utterances:
            if u.file_id == file_id:
                return u
        # "not found" would send the user looking for a line or file that is right there
        reasons = [item for item in reading.left_out if item.file_id == file_id]
        if reasons:
            raise DataError(min(reasons, key=lambda item: item.reason == "duplicate").message)
    raise DataError(f"file id {file_id} not found in {', '.join(searched) or dataset}")


class SpeechDataset(torch.utils.data.Dataset):
    """(features, labels) pairs.

    Without waveform augmentation, every item's features are computed once, since every epoch revisits every item:
    read from a feature store (`use_store`: shards on disk read per utterance, nothing held in RAM but the frame counts)
    or kept in memory as fp16 (`precompute`). With it, each item is augmented afresh from a generator seeded by
    (seed, epoch, index), so DataLoader workers and resumed runs reproduce exactly the same batches.
    """

    def __init__(self, utterances: list[Utterance], features: FeatureExtractor, augment: WaveAugment | None = None,
                 seed: int = 0, left_out: list[LeftOut] | None = None, text: TextNormalizer = ENGLISH_TEXT):
        self.utterances = utterances
        self.left_out = left_out or []  # what the corpus reader did not make utterances of, and why
        self.features = features
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0  # set by the training loop before each epoch's DataLoader is created
        self.text = text  # how transcripts become labels and references
        self.text_counts = TextCounts()  # what that changed in these transcripts (numbers spelled, characters dropped)
        # label ids as 2-byte arrays: a third of a list of ints, for every utterance of the corpus in every rank
        self.labels = [array.array("H", text.labels(u.transcript, self.text_counts)) for u in utterances]
        self._cache: list[torch.Tensor | None] = [None] * len(utterances)
        self._store: FeatureStore | None = None
        self._rows = list(range(len(utterances)))  # each utterance's index in the store
        self.unreadable: list[str] = []  # why each audio file left out (`precompute`, `use_store`) could not be used

    def __len__(self) -> int:
        return len(self.utterances)

    def compute(self, i: int, augment: bool = True) -> torch.Tensor:
        wave = load_audio(self.utterances[i].path, self.features.mfcc.sample_rate)
        if augment and self.augment is not None:
            wave = self.augment(wave, item_generator(self.seed, self.epoch, i))
        return self.features(wave)

    def plain_features(self, i: int) -> torch.Tensor:
        """Item i's un-augmented features (n_mfcc, frames), float32, from the store or memory once computed."""
        return self._cached(i).float()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.compute(i) if self.augment is not None else self._cached(i).float()
        return feats, torch.tensor(self.labels[i], dtype=torch.long)

    def _cached(self, i: int) -> torch.Tensor:
        if self._store is not None:
            return self._store[self._rows[i]]
        if self._cache[i] is None:
            self._cache[i] = self.compute(i, augment=False).to(torch.float16)
        return self._cache[i]

    def precompute(self, workers: int = 0, progress: bool = False, desc: str = "features") -> list[int]:
        """Computes every item's un-augmented features into memory (in `workers` processes) and returns their frame
        counts, which batching needs. Items whose audio cannot be used are left out of the dataset, their messages
        kept in `unreadable`: one corrupt file in a corpus must not stop training."""
        missing = [i for i, f in enumerate(self._cache) if f is None]
        failed: dict[int, str] = {}
        for i, feats in computed_features(self.utterances, self.features, missing, workers, progress, desc):
            if isinstance(feats, str):
                failed[i] = feats
            else:  # out of the loader's shared memory, which holds an open file per tensor (28k for 100 h)
                self._cache[i] = feats.clone()
        self._drop(failed)
        return [f.shape[-1] for f in self._cache]

    def use_store(self, store: FeatureStore) -> list[int]:
        """Reads features from `store` (this dataset's, complete: see asr.data.feature_store) from now on, leaves out
        the items whose audio could not be used as `precompute` does, and returns the frame counts."""
        self._store = store
        self._drop(store.failed)
        return [int(store.lengths[r]) for r in self._rows]

    def hold_in_memory(self) -> None:
        """Copies every item's features out of its store into RAM and reads them from there from now on, as
        `precompute` would hold them, without computing them again (the in-memory baseline of `asr bench data`)."""
        if self._store is not None:
            self._cache = [self._store[r].clone() for r in self._rows]
            self._store = None

    def _drop(self, failed: dict[int, str]) -> None:
        """Leaves the `failed` items out."""
        if not failed:
            return
        if len(failed) == len(self.utterances):
            raise DataError(f"none of the {len(failed)} audio files can be used, e.g. {next(iter(failed.values()))}")
        self.unreadable += [failed[i] for i in sorted(failed)]
        keep = [i for i in range(len(self.utterances)) if i not in failed]
        self.utterances = [self.utterances[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        self._cache = [self._cache[i] for i in keep]
        self._rows = [self._rows[i] for i in keep]


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
