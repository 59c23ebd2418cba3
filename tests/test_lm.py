"""The n-gram LM estimator (interpolated modified Kneser-Ney -> ARPA), the ARPA vocabulary reader and the lexicon
writer, checked against an independent ARPA reader written here, the real KenLM in flashlight-text and
torchaudio's CTC decoder."""

from __future__ import annotations

import gzip
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import asr_command, one_line_error, run_cli, run_cli_here

from asr.lm import LMError, arpa_words, build_arpa, read_sentences, write_lexicon

WORDS = ("the a cat dog sat ran on mat in house big small red blue green old new man woman saw "
         "and to of is was he she it they there").split()
assert len(WORDS) == 30
TOKENS = ["-", "|", "'", *"abcdefghijklmnopqrstuvwxyz"]


def corpus() -> list[str]:
    """200 random sentences over a 30-word vocabulary, plus a few phrases repeated so some n-grams are frequent."""
    rng = random.Random(1234)
    sentences = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(200)]
    sentences += ["the cat sat on the mat"] * 6 + ["the dog ran in the house"] * 4 + ["she saw the big red dog"] * 3
    return sentences


# ---------------------------------------------------------------------------------------------------------------
# An ARPA reader and scorer of our own: the textbook backoff rule, nothing shared with asr.lm.

Model = dict[tuple[str, ...], tuple[float, float]]  # n-gram -> (log10 p, log10 backoff)


def load_arpa(path: Path) -> tuple[int, Model]:
    """Parses an ARPA file and checks its structure: header counts, closed prefixes and suffixes, backoffs
    exactly on the n-grams that are the context of a longer one, log probabilities <= 0."""
    declared: dict[int, int] = {}
    model: Model = {}
    has_backoff: set[tuple[str, ...]] = set()
    section = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if line == "\\data\\":
            section = 0
        elif line == "\\end\\":
            break
        elif line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1:-len("-grams:")])
        elif section == 0:
            n, count = line.removeprefix("ngram ").split("=")
            declared[int(n)] = int(count)
        else:
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            assert len(gram) == section and gram not in model, line
            model[gram] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
            if len(fields) > 2:
                has_backoff.add(gram)
    order = max(declared)
    assert declared == dict(Counter(len(g) for g in model))
    contexts = {g[:-1] for g in model if len(g) > 1}
    assert contexts <= set(model) and {g[1:] for g in model if len(g) > 1} <= set(model)
    assert has_backoff == contexts
    assert all(p <= 0 and b <= 0 for p, b in model.values())
    assert model[("<s>",)][0] == -99 and ("</s>",) in model and ("<unk>",) in model
    return order, model


def log10_prob(model: Model, order: int, history: tuple[str, ...], word: str) -> float:
    """log10 p(word | history): the longest n-gram that is in the model, plus the backoff weights of the longer
    contexts that are (a context that is not in the model has weight 1)."""
    h = history[max(0, len(history) - order + 1):] if order > 1 else ()
    backoff = 0.0
    while (*h, word) not in model:
        assert h, f"{word!r} is not in the model"
        backoff += model.get(h, (0.0, 0.0))[1]
        h = h[1:]
    return backoff + model[(*h, word)][0]


def sentence_log10(model: Model, order: int, words: list[str]) -> float:
    """log10 p(words </s> | <s>), out-of-vocabulary words read as <unk>."""
    tokens = ["<s>", *(w if (w,) in model else "<unk>" for w in words), "</s>"]
    return sum(log10_prob(model, order, tuple(tokens[:i]), tokens[i]) for i in range(1, len(tokens)))


def predictable(model: Model) -> list[str]:
    return [g[0] for g in model if len(g) == 1 and g[0] != "<s>"]


def assert_normalized(model: Model, order: int, history: tuple[str, ...]) -> None:
    total = sum(10 ** log10_prob(model, order, history, w) for w in predictable(model))
    assert total == pytest.approx(1.0, abs=1e-4), (order, history)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, dict]]:
    """The corpus as ARPA files of orders 1 to 4: order -> (path, summary)."""
    root = tmp_path_factory.mktemp("lm")
    return {n: (root / f"{n}gram.arpa", build_arpa(corpus(), n, root / f"{n}gram.arpa")) for n in (1, 2, 3, 4)}


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_history_gives_a_probability_distribution(built, order):
    path, summary = built[order]
    n, model = load_arpa(path)
    assert n == order
    vocab = set(predictable(model))
    assert vocab == set(WORDS) | {"</s>", "<unk>"}
    assert summary["order"] == order and summary["vocab"] == 30 and summary["sentences"] == 213
    assert summary["ngrams"] == [sum(len(g) == k for g in model) for k in range(1, order + 1)]
    histories = {g[:-1] for g in model if len(g) > 1}  # every seen context
    histories |= {(), ("<s>",), ("<s>", "the"), ("<s>", "the", "cat"),
                  ("mat", "mat", "mat"), ("<unk>",), ("red", "<unk>", "they")}  # unseen ones too
    for history in histories:
        assert_normalized(model, order, history)


def test_kneser_ney_by_hand(tmp_path):
    """A model small enough to work out on paper (counts of counts are too thin: the fallback discounts
    D1, D2, D3+ = 0.5, 1, 1.5 apply at every order)."""
    summary = build_arpa(["the cat sat", "the dog sat", "a cat ran"], 3, tmp_path / "lm.arpa")
    _, model = load_arpa(tmp_path / "lm.arpa")
    assert summary["discounts"] == [[0.5, 1.0, 1.5]] * 3
    # Unigrams use continuation counts (distinct left neighbours, <s> included): sat 2 (cat, dog), the 1,
    # a 1, cat 2, dog 1, ran 1, </s> 2; total 10. gamma = (0.5 * 4 + 1 * 3) / 10; uniform over 8 words.
    p_sat = (2 - 1) / 10 + 0.5 / 8
    # Bigrams after "cat" (continuation counts): "cat sat" 1 (the), "cat ran" 1 (a); gamma = (0.5 + 0.5) / 2.
    p_sat_cat = (1 - 0.5) / 2 + 0.5 * p_sat
    # The trigram "the cat sat" has a raw count 1 of 1 for its context; gamma = 0.5 / 1.
    p_sat_the_cat = (1 - 0.5) / 1 + 0.5 * p_sat_cat
    assert model[("sat",)][0] == pytest.approx(math.log10(p_sat), abs=1e-6)
    assert model[("cat", "sat")][0] == pytest.approx(math.log10(p_sat_cat), abs=1e-6)
    assert model[("the", "cat", "sat")][0] == pytest.approx(math.log10(p_sat_the_cat), abs=1e-6)
    assert model[("cat",)][1] == pytest.approx(math.log10(0.5), abs=1e-6)
    # <unk> only has the uniform share of the unigram mass
    assert model[("<unk>",)][0] == pytest.approx(math.log10(0.5 / 8), abs=1e-6)
    # Lower-order n-grams that start with <s> keep raw counts: "<s> the" 2, "<s> a" 1; gamma = (1 + 0.5) / 3.
    p_the = (1 - 0.5) / 10 + 0.5 / 8
    assert model[("<s>", "the")][0] == pytest.approx(math.log10((2 - 1) / 3 + 0.5 * p_the), abs=1e-6)
    assert model[("<s>",)][1] == pytest.approx(math.log10(0.5), abs=1e-6)


def test_lower_orders_count_contexts_not_occurrences(tmp_path):
    """The Kneser-Ney point: "francisco" is frequent but only ever follows "san", so as a unigram (what a new
    context backs off to) it is less likely than "glasses", seen fewer times after more words."""
    text = ["san francisco"] * 10 + ["red glasses", "blue glasses", "old glasses", "new glasses"]
    build_arpa(text, 2, tmp_path / "2.arpa")
    build_arpa(text, 1, tmp_path / "1.arpa")
    _, bigram = load_arpa(tmp_path / "2.arpa")
    _, unigram = load_arpa(tmp_path / "1.arpa")
    assert bigram[("francisco",)][0] < bigram[("glasses",)][0]
    assert unigram[("francisco",)][0] > unigram[("glasses",)][0]  # the highest order keeps raw counts
    assert log10_prob(bigram, 2, ("san",), "francisco") > log10_prob(bigram, 2, ("san",), "glasses")


def test_discounts_follow_chen_and_goodman(built):
    """The highest order's D1, D2, D3+ from its counts of counts (raw counts of the padded sentences); the
    bigrams, as the corpus's 4-grams are nearly all singletons (their estimates are out of range)."""
    grams: Counter = Counter()
    for sentence in corpus():
        tokens = ["<s>", *sentence.split(), "</s>"]
        grams.update(zip(tokens, tokens[1:], strict=False))
    n = Counter(grams.values())
    y = n[1] / (n[1] + 2 * n[2])
    expected = [1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3]]
    assert all(n[k] for k in (1, 2, 3, 4))
    assert built[2][1]["discounts"][1] == pytest.approx(expected)
    assert built[4][1]["discounts"][3] == [0.5, 1.0, 1.5]  # n1, n2, n3, n4 = 1130, 1, 5, 5: D2 < 0


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kenlm_loads_the_file_and_agrees_with_the_backoff_rule(built, tmp_path, order):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import create_word_dict, load_words

    path, _ = built[order]
    _, model = load_arpa(path)
    lexicon = tmp_path / "lexicon.txt"
    write_lexicon([*WORDS, "zebra"], lexicon)  # "zebra" is spellable but not in the LM
    words = create_word_dict(load_words(str(lexicon)))  # as torchaudio builds it: <unk> added by load_words
    lm = KenLM(str(path), words)
    sentences = [
        "the cat sat on the mat",               # seen, repeated
        "mat the mat the green it",             # unseen bigrams
        "the zebra sat on the mat",             # out of vocabulary: KenLM reads it as <unk>
        "they",
        corpus()[0],
    ]
    for sentence in sentences:
        state, total = lm.start(False), 0.0
        for word in sentence.split():
            state, score = lm.score(state, words.get_index(word))
            total += score
        state, score = lm.finish(state)
        total += score
        assert total == pytest.approx(sentence_log10(model, order, sentence.split()), abs=1e-4), sentence


def test_torchaudio_decoder_uses_the_lm_and_lexicon(built, tmp_path):
    import torch
    from torchaudio.models.decoder import ctc_decoder

    path, _ = built[3]
    lexicon = tmp_path / "lexicon.txt"
    assert write_lexicon(arpa_words(path), lexicon) == 30
    decoder = ctc_decoder(lexicon=str(lexicon), tokens=TOKENS, lm=str(path), blank_token="-", sil_token="|")
    # Emissions that spell "the cat sat" frame by frame (blank between letters, | between words).
    frames = [tok for ch in "the|cat|sat" for tok in (ch, "-")]
    emissions = torch.full((1, len(frames), len(TOKENS)), -10.0)
    for t, tok in enumerate(frames):
        emissions[0, t, TOKENS.index(tok)] = 0.0
    best = decoder(emissions.log_softmax(-1))[0][0]
    assert best.words == ["the", "cat", "sat"]


# ---------------------------------------------------------------------------------------------------------------

UPPER_CASE_ARPA = """
\\data\\
ngram 1=7
ngram 2=2

\\1-grams:
-1.5\t<unk>\t0
-99\t<s>\t-0.3
-1.0\t</s>
-0.9\tDON'T\t-0.2
-1.2\tSTOP
-2.0\tB2B
-2.1\tX-RAY

\\2-grams:
-0.5\t<s> DON'T
-0.4\tDON'T STOP

\\end\\
"""


def test_arpa_words_and_lexicon_of_an_upper_case_lm(tmp_path):
    arpa = tmp_path / "upper.arpa"
    arpa.write_text(UPPER_CASE_ARPA)
    assert arpa_words(arpa) == ["DON'T", "STOP", "B2B", "X-RAY"]
    with gzip.open(tmp_path / "upper.arpa.gz", "wt") as f:
        f.write(UPPER_CASE_ARPA)
    assert arpa_words(tmp_path / "upper.arpa.gz") == ["DON'T", "STOP", "B2B", "X-RAY"]

    lexicon = tmp_path / "lexicon.txt"
    assert write_lexicon([*arpa_words(arpa), "STOP", "<unk>", "Café"], lexicon) == 3
    assert lexicon.read_text().splitlines() == ["DON'T\td o n ' t |", "STOP\ts t o p |", "Café\tc a f e |"]


def test_read_sentences_normalizes_and_drops_empty_lines(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("HELLO, World!\n\n   \n\u2018Tis a well-known 42 fact\n")
    assert list(read_sentences(text)) == ["hello world", "'tis a well known forty two fact"]  # numbers spelled out
    with pytest.raises(LMError, match="no such file"):
        read_sentences(tmp_path / "missing.txt")
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9 one\r\nsecond line\rthird\n")  # BOM, CRLF, a lone CR
    assert list(read_sentences(crlf)) == ["cafe one", "second line", "third"]


def test_lm_build_refuses_a_file_that_is_not_text(tmp_path):
    """`asr lm build --text` with an audio file (or a model, or anything with NUL bytes) built an LM of junk words
    and said nothing; now one line names the file, the line and the first byte that is not UTF-8 text, and no LM
    is written."""
    flac = tmp_path / "a.flac"
    sf.write(flac, np.sin(np.arange(16000) / 5.0).astype(np.float32), 16000)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"the cat sat\nthe dog\x00ran\n")
    with pytest.raises(LMError, match=r"nul.txt line 2: not UTF-8 text \(byte 0x00 at column 8\)"):
        list(read_sentences(nul))
    out = tmp_path / "lm.arpa"
    proc = run_cli_here(["lm", "build", "--text", str(flac), "--out", str(out)], cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert f"LM text {flac} line 1: not UTF-8 text (byte 0x" in proc.stderr and "UTF-8" in proc.stderr
    assert not out.exists()


def test_bad_input_is_a_one_line_error(tmp_path):
    out = tmp_path / "lm.arpa"
    with pytest.raises(LMError, match="no sentences"):
        build_arpa([], 3, out)
    with pytest.raises(LMError, match="no sentences"):
        build_arpa(["", "   "], 3, out)
    with pytest.raises(LMError, match="order must be .* >= 1"):
        build_arpa(["a b"], 0, out)
    with pytest.raises(LMError, match="reserved"):
        build_arpa(["a </s> b"], 2, out)
    with pytest.raises(LMError, match="discounts for the 1-grams"):
        build_arpa(["one sentence only"], 3, out, discount_fallback=False)
    not_arpa = tmp_path / "binary.lm"
    not_arpa.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0" + bytes(range(256)) * 100)
    with pytest.raises(LMError, match="not an ARPA file"):
        arpa_words(not_arpa)
    assert not out.exists()


@pytest.mark.parametrize("order", [1, 2, 3, 6])
def test_one_sentence_still_gives_a_valid_model(tmp_path, order):
    summary = build_arpa(["just one short sentence"], order, tmp_path / "lm.arpa")
    assert summary["discounts"] == [[0.5, 1.0, 1.5]] * order  # nothing to estimate discounts from
    n, model = load_arpa(tmp_path / "lm.arpa")
    # "<s> just one short sentence </s>" has 6 - order + 1 n-grams; the unigrams add <unk>
    assert n == order and summary["ngrams"][-1] == (7 if order == 1 else 6 - order + 1)
    for history in [(), ("<s>",), ("<s>", "just", "one"), ("one", "short"), ("short", "just"), ("<unk>",)]:
        assert_normalized(model, order, history)


def test_output_is_deterministic_and_written_atomically(tmp_path):
    first = tmp_path / "a.arpa"
    second = tmp_path / "b.arpa"
    build_arpa(corpus(), 3, first)
    build_arpa(corpus(), 3, second)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.arpa", "b.arpa"]  # no temporary files left
    # a write that cannot complete leaves nothing behind (here: the destination is a folder)
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        build_arpa(corpus(), 2, tmp_path / "taken")
    with pytest.raises(OSError):
        write_lexicon(WORDS, tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.arpa", "b.arpa", "taken"]


@pytest.mark.slow  # a CLI subprocess
def test_lm_build_refuses_order_1_before_writing(tmp_path):
    """A unigram ARPA file is valid, but the decoder's KenLM cannot load it: `asr lm build --order 1` wrote one
    anyway (exit 0), and using it failed later with a C++ location instead of the reason."""
    text = tmp_path / "text.txt"
    text.write_text("the cat sat\n")
    out = tmp_path / "lm.arpa"
    proc = run_cli(asr_command() + ["lm", "build", "--text", str(text), "--order", "1", "--out", str(out)],
                   cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert "--order 1" in proc.stderr and "bigram" in proc.stderr
    assert not out.exists()
