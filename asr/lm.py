"""Word n-gram language models for the beam search decoder: estimate one from text, read an ARPA file's words,
write the lexicon that lets the decoder spell them.

The estimator is interpolated modified Kneser-Ney (Chen & Goodman 1998), the smoothing KenLM's lmplz uses, in
plain Python: small enough to read top to bottom, and fast enough for LM text of up to a few million words
(half a million words make a 4-gram in about 15 s and 0.5 GB; KenLM's lmplz is the tool beyond that). Its
ARPA output loads in KenLM (and so in torchaudio's flashlight decoder) like any other.
"""

from __future__ import annotations

import gzip
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from asr import UserError
from asr.atomic import atomic_path
from asr.text import ENGLISH_TEXT, TextNormalizer, not_utf8_at

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SPECIAL = (BOS, EOS, UNK)
# lmplz's --discount_fallback values for D1, D2, D3+: valid for any counts (0 < D_k < k).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
# <s> is never predicted; ARPA's convention for "impossible" is a log10 probability of -99.
NEVER = -99.0
_HEADER_BYTES = 1 << 20  # how far arpa_words looks for the header before deciding it is not an ARPA file
KENLM_BINARY_MAGIC = b"mmap lm http://kheafield.com/code"  # how KenLM's binary models begin

Ngram = tuple[str, ...]
Discounts = tuple[float, float, float]


class LMError(UserError):
    """A language model that cannot be built or read (no text, bad order, not an ARPA file)."""


class NotArpaError(LMError):
    """A file that has no ARPA header (a KenLM binary model, or no LM at all)."""


def read_sentences(path: str | Path, text: TextNormalizer = ENGLISH_TEXT) -> Iterator[str]:
    """Lines of a text file, normalized as `text` says (the acoustic model's normalization: English by default),
    empty ones dropped: the LM must speak the same alphabet as the acoustic model it will score. Raises LMError,
    as the lines are read, for a file that is not UTF-8 text (an audio or model file given by mistake), naming the
    first line that is not."""
    path = Path(path)
    if not path.is_file():
        raise LMError(f"LM text {path}: no such file")
    return _normalized_lines(path, text)


def _normalized_lines(path: Path, normalizer: TextNormalizer) -> Iterator[str]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if (at := not_utf8_at(raw)) is not None:
                raise LMError(f"LM text {path} line {number}: not UTF-8 text{at}: give a text file, one sentence "
                              "per line, saved as UTF-8")
            for line in raw.decode("utf-8").lstrip("\ufeff").splitlines():  # CR line ends too, as text mode reads
                if text := normalizer.normalized(line):
                    yield text


def build_arpa(sentences: Iterable[str], order: int, out: str | Path, *, discount_fallback: bool = True) -> dict:
    """Estimates an interpolated modified Kneser-Ney model of the given order and writes it (atomically) as an
    ARPA file with <s>, </s> and <unk>. Returns {"order", "ngrams" (count per order), "vocab" (distinct words),
    "sentences", "discounts" (D1, D2, D3+ per order)}. Order 1 is valid ARPA, but KenLM (so the decoder)
    only loads order 2 and up."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise LMError(f"LM order must be a whole number >= 1, got {order!r}")
    counts, n_sentences = _adjusted_counts(sentences, order)
    if n_sentences == 0:
        raise LMError("no sentences to build the LM from: the text is empty (after normalization)")
    discounts = [_discounts(c, n, discount_fallback) for n, c in enumerate(counts, 1)]
    probs, backoffs = _interpolate(counts, discounts)
    _write_arpa(out, probs, backoffs)
    ngrams = [len(p) + (n == 1) for n, p in enumerate(probs, 1)]  # + <s>, which has no probability
    words = sum(1 for (w,) in probs[0] if w not in SPECIAL)
    return {"order": order, "ngrams": ngrams, "vocab": words, "sentences": n_sentences,
            "discounts": [list(d) for d in discounts]}


def _adjusted_counts(sentences: Iterable[str], order: int) -> tuple[list[Counter[Ngram]], int]:
    """The counts Kneser-Ney discounts, per order (index n-1 holds the n-grams).

    The highest order keeps raw counts. Lower orders get continuation counts N1+(. g), the number of distinct
    words seen before g: a lower order is only consulted when the longer context was not seen, so what matters
    is in how many contexts a word occurs, not how often ("francisco" is frequent but only after "san").
    N-grams starting with <s> keep raw counts, since nothing can precede <s> (as in KenLM). The <s> unigram is
    left out: it is never predicted.
    """
    highest: Counter[Ngram] = Counter()
    starts: Counter[Ngram] = Counter()  # <s>-initial n-grams below the highest order
    n_sentences = 0
    for sentence in sentences:
        words = sentence.split()
        if not words:
            continue
        if BOS in words or EOS in words:
            raise LMError(f"LM text contains a reserved sentence marker ({BOS} or {EOS}): {sentence[:80]!r}")
        tokens = (BOS, *words, EOS)
        n_sentences += 1
        for i in range(len(tokens) - order + 1):
            highest[tokens[i:i + order]] += 1
        for n in range(1, min(order, len(tokens) + 1)):
            starts[tokens[:n]] += 1
    counts = [highest]
    for n in range(order - 1, 0, -1):  # order n from the n-grams of order n+1 (<s>-initial ones included)
        lower = Counter(g[1:] for g in counts[0])
        lower.update({g: c for g, c in starts.items() if len(g) == n})
        counts.insert(0, lower)
    counts[0].pop((BOS,), None)
    counts[0].setdefault((UNK,), 0)  # unseen: predicted through the uniform share only
    return counts, n_sentences


def _discounts(counts: Counter[Ngram], n: int, fallback: bool) -> Discounts:
    """Chen & Goodman's estimates of D1, D2, D3+ from the counts of counts n1..n4 of one order. Tiny or
    unusual text can leave them undefined (some n_k = 0) or out of range; then the fixed fallback is used.
    The range is 0 < D_k < k (KenLM allows D_k = k): a seen n-gram should keep some of its own count, where
    n4 = 0 would otherwise give D3+ = 3 and make a word seen 3 times as likely as one never seen."""
    of = Counter(c for c in counts.values() if c <= 4)
    n1, n2, n3, n4 = (of[k] for k in range(1, 5))
    if n1 and n2 and n3:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(0 < dk < k for k, dk in enumerate(d, 1)):
            return d
    if not fallback:
        raise LMError(f"cannot estimate Kneser-Ney discounts for the {n}-grams (counts of counts n1..n4 = "
                      f"{n1}, {n2}, {n3}, {n4}): use more text, a lower order, or allow the discount fallback")
    return FALLBACK_DISCOUNTS


def _discount(count: int, d: Discounts) -> float:
    return d[min(count, 3) - 1]


def _interpolate(counts: list[Counter[Ngram]], discounts: list[Discounts]
                 ) -> tuple[list[dict[Ngram, float]], list[dict[Ngram, float]]]:
    """Probabilities p(w | h) of every counted n-gram and backoff weights gamma(h) of every context, order by
    order from the unigrams up:

        p(w | h) = max(c(hw) - D(c(hw)), 0) / c(h.) + gamma(h) * p(w | h minus its first word)
        gamma(h) = sum over w of D(c(hw)) / c(h.)       (the mass the discounts took away)

    The unigrams interpolate with the uniform distribution over the predictable words (all but <s>, <unk>
    included), which is how <unk> gets its small share. Since the interpolated p of an unseen hw is exactly
    gamma(h) * p(w | shorter h), gamma(h) is also the ARPA backoff weight of h.
    """
    probs: list[dict[Ngram, float]] = []
    backoffs: list[dict[Ngram, float]] = []
    for n, (grams, d) in enumerate(zip(counts, discounts, strict=True), 1):
        total: defaultdict[Ngram, int] = defaultdict(int)
        taken: defaultdict[Ngram, float] = defaultdict(float)
        for g, c in grams.items():
            if c:
                total[g[:-1]] += c
                taken[g[:-1]] += _discount(c, d)
        gamma = {h: taken[h] / total[h] for h in total}
        uniform = 1 / len(grams)
        order_probs = {}
        for g, c in grams.items():
            h = g[:-1]
            lower = uniform if n == 1 else probs[-1][g[1:]]
            order_probs[g] = (max(c - _discount(c, d), 0) / total[h] if c else 0.0) + gamma[h] * lower
        probs.append(order_probs)
        if n > 1:
            backoffs.append(gamma)
    backoffs.append({})  # the highest order is nobody's context
    return probs, backoffs


def _write_arpa(out: str | Path, probs: list[dict[Ngram, float]], backoffs: list[dict[Ngram, float]]) -> None:
    """ARPA text: log10 probabilities, a backoff on every n-gram that is the context of a longer one, n-grams
    sorted so the same text always gives the same bytes."""
    with _atomic_write(out) as f:
        f.write("\\data\\\n")
        f.write("".join(f"ngram {n}={len(p) + (n == 1)}\n" for n, p in enumerate(probs, 1)))
        for n, (order_probs, order_backoffs) in enumerate(zip(probs, backoffs, strict=True), 1):
            f.write(f"\n\\{n}-grams:\n")
            if n == 1:
                bos = backoffs[0].get((BOS,))
                f.write(f"{NEVER:.0f}\t{BOS}" + (f"\t{math.log10(bos):.6f}\n" if bos is not None else "\n"))
            for g in sorted(order_probs):
                line = f"{math.log10(order_probs[g]):.6f}\t{' '.join(g)}"
                bow = order_backoffs.get(g)
                f.write(line + (f"\t{math.log10(bow):.6f}\n" if bow is not None else "\n"))
        f.write("\n\\end\\\n")


def arpa_words(path: str | Path) -> list[str]:
    """The unigram vocabulary of an ARPA file (plain or .gz), without <s>, </s> and <unk>. Streams the file and
    stops after the unigrams, so multi-gigabyte LMs (LibriSpeech's 4-gram) cost a second, not their size."""
    path = Path(path)
    if not path.is_file():
        raise LMError(f"ARPA file {path}: no such file")
    words = []
    with _open_binary(path) as f:
        budget = _skip_past(f, b"\\data\\", _HEADER_BYTES, path)
        _skip_past(f, b"\\1-grams:", budget, path)
        for raw in f:
            line = raw.strip()
            if line.startswith(b"\\"):
                break
            if not line:
                continue
            fields = line.split()
            if len(fields) < 2:
                raise LMError(f"ARPA file {path}: malformed unigram line {raw[:80]!r}")
            word = fields[1].decode("utf-8", errors="replace")
            if word not in SPECIAL:
                words.append(word)
    return words


def arpa_order(path: str | Path) -> int:
    """The order of an ARPA file (plain or .gz): the highest n its \\data\\ header counts n-grams for. Reads the
    header only. Raises LMError when the file is not an ARPA file or its header counts nothing."""
    return max(arpa_counts(path))


def arpa_counts(path: str | Path) -> dict[int, int]:
    """The n-gram counts an ARPA file's (plain or .gz) \\data\\ header declares, by order, orders counted as 0
    left out. Reads the header only. Raises LMError when the file is not an ARPA file or its header counts
    nothing."""
    path = Path(path)
    counts = {}
    with _open_binary(path) as f:
        _skip_past(f, b"\\data\\", _HEADER_BYTES, path)
        for raw in itertools.islice(f, 100):  # `ngram N=COUNT` lines, up to the first section
            line = raw.strip()
            if line.startswith(b"\\"):
                break
            n, eq, count = line.removeprefix(b"ngram ").partition(b"=")
            if eq and n.strip().isdigit() and count.strip().isdigit() and int(count):
                counts[int(n)] = int(count)
    if not counts:
        raise LMError(f"ARPA file {path}: its \\data\\ header counts no n-grams")
    return counts


def is_kenlm_binary(path: str | Path) -> bool:
    """Whether the file starts like a KenLM binary model (`build_binary` output)."""
    with Path(path).open("rb") as f:
        return f.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _skip_past(f: IO[bytes], marker: bytes, budget: int, path: Path) -> int:
    """Reads lines up to and including `marker`, at most `budget` bytes (a binary KenLM model has no line
    structure to speak of); returns the budget left."""
    while budget > 0:
        line = f.readline(budget)
        if not line:
            break
        budget -= len(line)
        if line.strip() == marker:
            return budget
    raise NotArpaError(f"{path} is not an ARPA file (no {marker.decode()} line near its start); a binary KenLM "
                  "model has no readable word list")


def write_lexicon(words: Iterable[str], out: str | Path, text: TextNormalizer = ENGLISH_TEXT) -> int:
    """Writes a flashlight/torchaudio lexicon: `word<TAB>c h a r s |` per word, spelled in the acoustic model's
    characters (normalized as `text` says, English by default, so LibriSpeech's upper-case LM words spell in lower
    case) and ending with the word boundary `|`. Words that cannot be spelled as one word that way (digits, symbols,
    hyphens, <unk>) are skipped, since the decoder could never produce them. Returns the number of lines written.
    Raises LMError, writing nothing, when no word can be spelled: an empty lexicon makes the decoder return empty
    text for any audio."""
    written = given = 0
    seen: set[str] = set()
    letters = text.vocabulary.letters
    with _atomic_write(out) as f:
        for word in words:
            given += 1
            if any(ch.isdigit() for ch in word):  # spelled out, a number is several words (and num2words, which
                continue                          # a served model does not ship, is not needed)
            spelling, dropped = text.normalize(word)
            if word in seen or not spelling or dropped or not set(spelling) <= letters:
                continue
            seen.add(word)
            f.write(f"{word}\t{' '.join(spelling)} |\n")
            written += 1
        if not written:
            raise LMError(f"lexicon {out}: none of the {given} given words can be spelled with the model's "
                          f"characters ({text.vocabulary.describe()}), and an empty lexicon can only decode to empty "
                          "text")
    return written


@contextmanager
def _atomic_write(out: str | Path) -> Iterator[IO[str]]:
    """A text file that appears at `out` complete or not at all (asr.atomic): a crash never leaves a half-written LM
    that KenLM would choke on later."""
    with atomic_path(Path(out)) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        yield f
