"""A synthetic word 4-gram ARPA file of a given size, shaped like a LibriSpeech LM, for measuring what an LM that
size costs the decoder (`asr bench lm`) where the real one cannot be downloaded.

Shape: a 200,000-word vocabulary (LibriSpeech's LM lexicon size; fewer for files under 800 MB / 1,000 words per
4 MB) plus <s>, </s> and <unk>, and 2-, 3- and 4-gram counts in the proportions 1 : 2.77 : 4.13 that KenLM's lmplz
gave a 4-gram on a 682 M-token corpus (kpu/kenlm issue 185; LibriSpeech's LM text is about 800 M tokens). The
words are pronounceable letter strings, spelled with the model's characters so all of them enter the lexicon.
The n-grams are closed as a real backoff model's are: every n-gram's prefix and suffix are (n-1)-grams, and an
n-gram has a backoff weight exactly when it is the context of a longer one. Probabilities are random (log10, <= 0),
not normalized: loading and decoding cost do not depend on them.

Everything is drawn with numpy from one seed, so a seed and a size always give the same bytes; n-grams are built
as index arrays and written in chunks, so 800 MB takes about a minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.atomic import atomic_path

ORDER = 4
VOCAB_WORDS = 200_000
WORDS_PER_MB = 250  # vocabulary of a smaller file: 200,000 words at 800 MB
PROPORTIONS = (2.77, 4.13)  # 3- and 4-grams per 2-gram
BOS, EOS, UNK = 0, 1, 2  # word ids of <s>, </s>, <unk>; the words follow, most frequent first
SPECIAL = ("<s>", "</s>", "<unk>")
_TABLE = 1 << 16  # distinct formatted log10 values per table
_CHUNK = 1 << 20  # n-grams formatted and written at a time
_ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z", "bl",
           "br", "ch", "cl", "cr", "dr", "fl", "fr", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th", "tr")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou", "y")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "'s")


@dataclass
class Ngrams:
    """One order's n-grams: word ids (count, n), the indices of each one's prefix and suffix among the
    (n-1)-grams, and which of them are the context of an (n+1)-gram."""
    words: np.ndarray
    prefix: np.ndarray
    suffix: np.ndarray
    is_context: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.words)


def vocabulary_size(size_mb: float) -> int:
    """Words (besides <s>, </s>, <unk>) of a synthetic LM of `size_mb` MB: LibriSpeech's 200,000 at 800 MB and
    above, proportionally fewer below (so a small test file is still mostly n-grams)."""
    return int(min(VOCAB_WORDS, max(100, size_mb * WORDS_PER_MB)))


def write_synthetic_arpa(path: Path, size_mb: float, seed: int = 0) -> list[int]:
    """Writes (atomically) a valid 4-gram ARPA file of about `size_mb` MB (10^6 bytes, within a few percent),
    the same bytes for the same size and seed. Returns the n-gram counts per order (1..4). Raises OSError
    from writing (a full disk, a folder that cannot be written)."""
    words = _words(vocabulary_size(size_mb), np.random.default_rng(seed))
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    first = _ngrams(len(words), _bigram_count(size_mb * 1e6, lengths), seed)
    scale = (size_mb * 1e6 - _unigram_bytes(words, first)) / _ngram_bytes(first[1:], lengths)
    grams = _ngrams(len(words), max(1, round(len(first[1]) * scale)), seed)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        _write(f, words, grams, np.random.default_rng(seed + 1))
    return [len(g) for g in grams]


def _words(count: int, rng: np.random.Generator) -> list[str]:
    """<s>, </s>, <unk>, then `count` distinct pronounceable words, shorter ones more often first (frequent)."""
    seen: dict[str, None] = {}
    while len(seen) < count:
        n = count - len(seen)
        syllables = np.minimum(1 + rng.poisson(np.linspace(0.6, 2.2, n)), 6)
        parts = [rng.integers(0, len(p), size=(n, 6)) for p in (_ONSETS, _NUCLEI, _CODAS)]
        for i in range(n):
            word = "".join(_ONSETS[parts[0][i, j]] + _NUCLEI[parts[1][i, j]] for j in range(syllables[i]))
            seen.setdefault(word + _CODAS[parts[2][i, 0]], None)
    return [*SPECIAL, *list(seen)[:count]]


def _zipf(size: int, skip: tuple[int, ...]) -> np.ndarray:
    """Zipf-Mandelbrot probabilities over word ids (rank = id), the ids in `skip` impossible."""
    p = 1.0 / (np.arange(size) + 2.7)
    p[list(skip)] = 0.0
    return p / p.sum()


def _bigram_count(size_bytes: float, lengths: np.ndarray) -> int:
    """A first guess of the 2-grams that fill `size_bytes` (write_synthetic_arpa then scales it to the bytes the
    n-grams drawn with it actually take)."""
    mean_word = float(lengths[3:].mean())
    per_bigram = sum(k * (12 + n * (mean_word + 1) + 10 * (n < ORDER)) for n, k in zip(
        range(2, ORDER + 1), (1.0, *PROPORTIONS), strict=True))
    return max(1, int(size_bytes / per_bigram))


def _ngrams(vocab: int, bigrams: int, seed: int) -> list[Ngrams]:
    """Unigrams to 4-grams over `vocab` word ids, with `bigrams` 2-grams and the higher orders in PROPORTIONS."""
    rng = np.random.default_rng(seed + 2)
    ids = np.arange(vocab, dtype=np.int32)[:, None]
    none = np.zeros(vocab, dtype=np.int64)
    grams = [Ngrams(ids, none, none), _bigrams(vocab, bigrams, rng)]
    for k in PROPORTIONS:
        grams.append(_extend(grams[-2], grams[-1], max(1, round(bigrams * k)), rng))
    for lower, higher in zip(grams, grams[1:], strict=False):
        lower.is_context = np.zeros(len(lower), dtype=bool)
        lower.is_context[higher.prefix] = True
    grams[-1].is_context = np.zeros(len(grams[-1]), dtype=bool)
    return grams


def _distinct(draw, target: int, rng: np.random.Generator) -> np.ndarray:
    """`target` distinct int64 codes from draw(n) (n codes, repeats allowed), sorted. Draws more the more repeats
    the last draw had."""
    codes, yield_rate = np.empty(0, dtype=np.int64), 1.0
    while len(codes) < target:
        size = int((target - len(codes)) / yield_rate * 1.1) + 16
        before = len(codes)
        codes = np.sort(np.concatenate([codes, draw(size)]))
        codes = codes[np.concatenate([[True], codes[1:] != codes[:-1]])]
        yield_rate = max((len(codes) - before) / size, 0.01)
    if len(codes) > target:
        codes = np.sort(rng.choice(codes, target, replace=False))
    return codes


def _bigrams(vocab: int, count: int, rng: np.random.Generator) -> Ngrams:
    """Word pairs drawn Zipf-like: <s> only first, </s> only second, <unk> never (it stays a unigram)."""
    first, second = _zipf(vocab, (EOS, UNK)), _zipf(vocab, (BOS, UNK))
    count = min(count, (vocab - 2) ** 2)
    codes = _distinct(lambda n: rng.choice(vocab, n, p=first) * vocab + rng.choice(vocab, n, p=second), count, rng)
    pairs = np.stack([codes // vocab, codes % vocab], axis=1).astype(np.int32)
    return Ngrams(pairs, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64))


def _extend(lower: Ngrams, grams: Ngrams, count: int, rng: np.random.Generator) -> Ngrams:
    """(n+1)-grams from n-grams: an n-gram g (drawn uniformly) and an n-gram that starts with g's suffix, so both
    the (n+1)-gram's prefix (g) and its suffix are n-grams. `lower` are the (n-1)-grams, which index g's suffix."""
    children = np.searchsorted(grams.prefix, np.arange(len(lower) + 1))  # n-grams by their (n-1)-gram prefix
    n = len(grams)

    def draw(size: int) -> np.ndarray:
        parent = rng.integers(0, n, size)
        lo, hi = children[grams.suffix[parent]], children[grams.suffix[parent] + 1]
        keep = hi > lo
        parent, lo, hi = parent[keep], lo[keep], hi[keep]
        return parent * n + lo + (rng.random(len(lo)) * (hi - lo)).astype(np.int64)

    codes = _distinct(draw, count, rng)
    prefix, suffix = codes // n, codes % n
    return Ngrams(np.concatenate([grams.words[prefix], grams.words[suffix, -1:]], axis=1), prefix, suffix)


def _unigram_bytes(words: list[str], grams: list[Ngrams]) -> int:
    return sum(len(_unigram_line(i, w, bool(grams[0].is_context[i]))) for i, w in enumerate(words))


def _ngram_bytes(grams: list[Ngrams], lengths: np.ndarray) -> float:
    """Bytes of the 2- to 4-gram lines: log10 p (9), tab, words and spaces, backoff (tab and 9) if any, newline."""
    return float(sum(lengths[g.words].sum() + len(g) * (11 + g.words.shape[1] - 1) + 10 * g.is_context.sum()
                     for g in grams))


def _unigram_line(i: int, word: str, is_context: bool) -> str:
    p = -99.0 if i == BOS else -1.0 - np.log10(i + 2.7) if i != UNK else -6.5
    return f"{p:.6f}\t{word}" + (f"\t{-0.1 - (i % 97) / 100:.6f}\n" if is_context else "\n")


def _table(low: float, high: float, prefix: str = "") -> np.ndarray:
    """Formatted log10 values between low and high (always 9 characters: -d.dddddd), as a numpy object array."""
    return np.array([f"{prefix}{v:.6f}" for v in np.linspace(low, high, _TABLE)], dtype=object)


def _write(f, words: list[str], grams: list[Ngrams], rng: np.random.Generator) -> None:
    f.write("\\data\\\n" + "".join(f"ngram {n}={len(g)}\n" for n, g in enumerate(grams, 1)))
    f.write("\n\\1-grams:\n")
    f.write("".join(_unigram_line(i, w, bool(grams[0].is_context[i])) for i, w in enumerate(words)))
    text = np.array(words, dtype=object)
    probs, backoffs = _table(-6.0, -0.01), _table(-1.5, -0.01, "\t")
    for n, g in enumerate(grams[1:], 2):
        f.write(f"\n\\{n}-grams:\n")
        for start in range(0, len(g), _CHUNK):
            ids = g.words[start:start + _CHUNK]
            line = probs[rng.integers(0, _TABLE, len(ids))] + "\t" + text[ids[:, 0]]
            for j in range(1, n):
                line = line + " " + text[ids[:, j]]
            bow = np.where(g.is_context[start:start + _CHUNK], backoffs[rng.integers(0, _TABLE, len(ids))], "")
            f.write("".join((line + bow + "\n").tolist()))
    f.write("\n\\end\\\n")
