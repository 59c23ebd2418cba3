"""What training reads: the splits as datasets, the utterances worth training on, each epoch's batches and the
loader that brings them, and how the cores are shared between loading and compute."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from asr import checkpoint as ckpt
from asr.batching import plan_batches
from asr.data.augment import WaveAugment
from asr.data.dataset import CorpusReading, SpeechDataset, Utterance, collate, left_out_lines, read_corpus
from asr.data.feature_store import featurize, open_store, single_threaded_worker, store_folder, store_root
from asr.features import FeatureExtractor
from asr.model import SpeechModel
from asr.settings import TextConfig, TrainConfig
from asr.text import ENGLISH_TEXT, TextNormalizer
from asr.training import distributed as dist
from asr.vocabulary import ENGLISH, Vocabulary, VocabularyError, read_vocabulary


@dataclass
class TrainData:
    """The featurized splits one run trains and validates on, and which training utterances it uses."""
    features: FeatureExtractor
    train_set: SpeechDataset
    dev_set: SpeechDataset
    train_lengths: list[int]     # feature frames per training utterance
    dev_lengths: list[int]
    items: list[int]             # indices of the training utterances worth training on
    skipped: dict[str, int]      # counts of those left out, by reason
    loader_workers: int          # processes the training loader reads with (0: in the training process)
    left_out: dict[str, int] = field(default_factory=dict)  # left_out_<reason> counts of the training splits
    text: RunText = field(default_factory=lambda: RunText(ENGLISH_TEXT))  # how transcripts become labels


@dataclass
class RunText:
    """The text normalization a run trains with, and the characters a learned vocabulary left out (with counts)."""
    normalizer: TextNormalizer   # what the model carries
    rare: dict[str, int] = field(default_factory=dict)
    source: str = "english"     # english, the vocabulary file, learned from..., or resumed run
    # The training splits as read to learn the vocabulary (--vocab auto), for training_data to label instead of
    # reading the folders a second time (which could also find other transcripts than the vocabulary was learned
    # from); None when nothing was read.
    train_reading: CorpusReading | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """One line: the vocabulary, where it comes from, and what a learned one left out."""
        t = self.normalizer
        line = (f"vocabulary: {len(t.vocabulary)} symbols ({self.source}; {t.vocabulary.describe()}), language "
                f"{t.language}{', lower-cased' if t.lowercase else ''}")
        if self.rare:
            listed = ", ".join(f"{ch!r} x{n}" for ch, n in sorted(self.rare.items(), key=lambda kv: (-kv[1], kv[0])))
            line += f"; seen too seldom to learn, dropped: {listed}"
        return line


def sampled(utterances: list[Utterance], limit: int = 0, seed: int = 0) -> list[Utterance]:
    """`limit` of the utterances sampled with `seed` (in file id order), or all of them when limit is 0."""
    if limit and limit < len(utterances):
        return sorted(random.Random(seed).sample(utterances, limit), key=lambda u: u.file_id)
    return utterances


def load_dataset(dirs: Sequence[str], features: FeatureExtractor, limit: int = 0, seed: int = 0,
                 augment: WaveAugment | None = None, text: TextNormalizer = ENGLISH_TEXT,
                 reading: CorpusReading | None = None) -> SpeechDataset:
    """The utterances of one or more split folders, `limit` of them sampled with `seed` if set, labelled by `text`,
    and what the reader left out of them. `reading`: the folders as read_corpus already read them (not read
    again)."""
    reading = reading if reading is not None else read_corpus(dirs)
    return SpeechDataset(sampled(reading.utterances, limit, seed), features, augment, seed, reading.left_out, text)


def fixed_vocabulary(cfg: TextConfig) -> Vocabulary | None:
    """The vocabulary --vocab names (english or a file; None for auto, which is learned from the data). Raises
    VocabularyError in one line for a file that cannot be used: called before any data is read."""
    if cfg.vocab == "auto":
        return None
    vocabulary = ENGLISH if cfg.vocab == "english" else read_vocabulary(cfg.vocab)
    if not cfg.lowercase and all(ch == ch.lower() for ch in vocabulary.characters):
        raise VocabularyError(f"--lowercase false keeps capitals, which --vocab {cfg.vocab} has none of: give "
                              "--vocab auto or a vocabulary FILE with them")
    return vocabulary


def run_text(cfg: TrainConfig, resume_state: dict | None = None) -> RunText:
    """How this run's transcripts become labels: a resumed run's from its checkpoint, else from --vocab, --language
    and --lowercase; --vocab auto learns the vocabulary from the transcripts of the training utterances the run
    uses (their text only: no audio is read), and keeps that reading (RunText.train_reading) for training_data."""
    if resume_state is not None:
        return RunText(ckpt.checkpoint_text(resume_state), source="resumed run")
    t = cfg.text
    vocabulary = fixed_vocabulary(t)
    if vocabulary is not None:
        return RunText(TextNormalizer(vocabulary, t.language, t.lowercase), source=t.vocab)
    reading = read_corpus(cfg.data.train_data)
    utterances = sampled(reading.utterances, cfg.data.max_utterances, cfg.optim.seed)  # those load_dataset takes
    text, rare = TextNormalizer.from_transcripts((u.transcript for u in utterances), t.vocab_min_count,
                                                 t.lowercase, t.language)
    return RunText(text, rare, f"learned from {len(utterances)} training transcripts", reading)


def wave_augment(cfg: TrainConfig) -> WaveAugment:
    a = cfg.augment
    return WaveAugment(gain_db=a.gain_db, noise_snr_db=a.noise_snr_db, shift_ms=a.shift_ms,
                       speed=a.speed_perturb, sample_rate=cfg.features.sample_rate)


def training_data(cfg: TrainConfig, model: SpeechModel, ctx: dist.Context, progress: bool, say=print,
                  text: RunText | None = None) -> TrainData:
    """Reads and featurizes the training and dev splits (see `featurize_split`), labelled by `text` (default
    English; the training splits as it read them, if it did), and picks the training utterances `model` can learn
    from; says which files it could not read and what the corpus reader left out."""
    text = text or RunText(ENGLISH_TEXT)
    features = FeatureExtractor.for_recognizer(cfg.recognizer())
    augment = wave_augment(cfg)
    train_set = load_dataset(cfg.data.train_data, features, cfg.data.max_utterances, cfg.optim.seed, augment,
                             text.normalizer, text.train_reading)
    text = replace(text, train_reading=None)  # the run keeps its text settings, not the whole corpus's reading
    dev_set = load_dataset(cfg.data.dev_data, features, text=text.normalizer)
    for line in left_out_lines(dict.fromkeys(train_set.left_out + dev_set.left_out)):  # once each, before featurizing
        say(line)
    train_lengths = featurize_split(train_set, cfg, ctx, progress, "features train")
    dev_lengths = featurize_split(dev_set, cfg, ctx, progress, "features dev")
    for message in dict.fromkeys(train_set.unreadable + dev_set.unreadable):  # once per file, in order
        say(f"skipping {message}")
    items, skipped = trainable_items(train_set, train_lengths, model, cfg)
    loader_workers = cfg.data.workers if augment.enabled else 0  # features from the store or RAM need no workers
    return TrainData(features, train_set, dev_set, train_lengths, dev_lengths, items, skipped, loader_workers,
                     CorpusReading([], train_set.left_out).counts(), text)


def featurize_split(dataset: SpeechDataset, cfg: TrainConfig, ctx: dist.Context, progress: bool, desc: str
                    ) -> list[int]:
    """Makes `dataset` read its un-augmented features from its feature store under cfg.data.feature_cache, and
    returns their frame counts. Rank r of w computes the missing shards k with k % w == r, then every rank waits for
    the others and opens the whole store. Where the store's root is not shared by the machines (the default, in each
    one's ~/.cache), the ranks of each machine then compute what the other machines wrote elsewhere, split between
    them alike. With --feature_cache memory, every rank computes every item into RAM."""
    root = store_root(cfg.data.feature_cache)
    if root is None:
        return dataset.precompute(prep_workers(cfg), progress, desc)
    folder = store_folder(root, dataset.features, dataset.utterances)
    workers = prep_workers(cfg, ctx.local_world)
    featurize(dataset.utterances, dataset.features, folder, (ctx.rank, ctx.world), workers, progress, desc)
    dist.barrier(ctx)
    if ctx.world > ctx.local_world:
        featurize(dataset.utterances, dataset.features, folder, (ctx.local_rank, ctx.local_world), workers, progress,
                  desc)
        dist.barrier(ctx)
    return dataset.use_store(open_store(folder, [u.file_id for u in dataset.utterances]))


def ctc_min_frames(labels: list[int]) -> int:
    """CTC needs a frame per label plus a blank between repeated labels."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:], strict=False))


def trainable_items(dataset: SpeechDataset, lengths: list[int], model: SpeechModel, cfg: TrainConfig
                    ) -> tuple[list[int], dict[str, int]]:
    """Indices worth training on, and counts of those skipped: audio that cannot be used (already left out by
    `precompute`), an empty transcript (an id alone on its line, or nothing but digits and symbols: it would teach
    the model to say nothing over speech), too long for memory, or too short for their transcript under CTC (they
    could only ever produce an infinite loss)."""
    max_frames = cfg.data.max_seconds * 1000 / cfg.features.hop_ms
    out = model.output_lengths(torch.tensor(lengths)).tolist()
    items, skipped = [], {"skipped_unreadable": len(dataset.unreadable), "skipped_empty_transcript": 0,
                          "skipped_too_long": 0, "skipped_too_short": 0}
    for i, (frames, out_frames) in enumerate(zip(lengths, out, strict=True)):
        if not dataset.labels[i]:
            skipped["skipped_empty_transcript"] += 1
        elif frames > max_frames:
            skipped["skipped_too_long"] += 1
        elif out_frames < ctc_min_frames(dataset.labels[i]):
            skipped["skipped_too_short"] += 1
        else:
            items.append(i)
    return items, skipped


def max_batch_frames(cfg: TrainConfig) -> int:
    return int(cfg.optim.max_batch_seconds * 1000 / cfg.features.hop_ms)


def epoch_batches(cfg: TrainConfig, lengths: list[int], items: list[int], epoch: int, world: int) -> list[list[int]]:
    """The epoch's global batches. SortaGrad (Deep Speech 2): epoch 1 runs shortest-first, which gets CTC off its
    blank plateau sooner; later epochs are shuffled. Batches too small to give every rank an item are dropped."""
    batches = plan_batches(lengths, items, max_items=cfg.optim.batch, max_frames=max_batch_frames(cfg),
                           seed=None if epoch == 0 else cfg.optim.seed + epoch)
    return [b for b in batches if len(b) >= world]


def steps_in(n_batches: int, accumulate: int) -> int:
    return math.ceil(n_batches / accumulate)


def total_steps(cfg: TrainConfig, data: TrainData, world: int) -> int:
    """Optimizer steps over the whole run (the one-cycle schedule spans them)."""
    return sum(steps_in(len(epoch_batches(cfg, data.train_lengths, data.items, e, world)), cfg.optim.accumulate)
               for e in range(cfg.optim.epoch))


def train_loader(dataset: SpeechDataset, batches: list[list[int]], workers: int, device: torch.device
                 ) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        worker_init_fn=single_threaded_worker, pin_memory=device.type == "cuda",
        generator=torch.Generator())  # its own generator: creating the loader must not advance the global RNG


def prep_workers(cfg: TrainConfig, ranks_here: int = 1) -> int:
    """Up-front featurization has the machine to itself: one single-threaded process per core (up to 8), shared
    by the `ranks_here` ranks that featurize on this machine at once (8 ranks with 8 processes each would put 64
    processes on 8 cores)."""
    if cfg.data.workers == 0:
        return 0
    return max(1, max(cfg.data.workers, min(8, os.cpu_count() or 1)) // ranks_here)


def intra_op_threads(cfg: TrainConfig, loader_workers: int) -> int:
    """On few cores, oversubscription is what kills throughput: busy loader workers each take a core."""
    if cfg.optim.threads:
        return cfg.optim.threads
    return max(1, torch.get_num_threads() - loader_workers)
