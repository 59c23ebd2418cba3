"""Feature extraction and the acoustic model: shapes, lengths, and that every GRU layer recurs over time.

The DeepSpeech2 tutorial this model descends from builds its GRUs with `batch_first=(i == 0)` while feeding
every layer (batch, time, features): from the second layer on the recurrence then runs over the *batch*,
so an utterance's transcript depends on the other utterances in its batch. The tests here catch that
(cross-item independence), check the recurrence really spans time in both directions, and check that
padding an utterance in a batch does not change its outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_layernorms
from torch import nn

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.config import FeatureConfig, RecognizerConfig, from_dict
from asr.data.dataset import collate
from asr.features import FeatureExtractor
from asr.model import SpeechModel
from asr.text import VOCAB

N_FEATS = 13
RNN_DIM = 16


def make_model(rnn_layers: int = 2, cnn_layers: int = 1, seed: int = 0) -> SpeechModel:
    """A small model in eval mode whose LayerNorm gains and biases are random, as after training
    (freshly initialized ones are exactly 1 and 0, which hides whatever depends on them)."""
    torch.manual_seed(seed)
    return randomize_layernorms(SpeechModel(N_FEATS, len(VOCAB), cnn_layers=cnn_layers, cnn_channels=4,
                                            rnn_layers=rnn_layers, rnn_dim=RNN_DIM, dropout=0.1, time_stride=2))


@torch.no_grad()
def run(model: SpeechModel, feats: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return model(feats, torch.tensor(lengths))


def batch_of(*items: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(n_feats, T_i) items -> zero-padded (B, n_feats, T) batch and lengths, exactly as training collates."""
    b = collate([(x, torch.tensor([1])) for x in items])
    return b["features"], b["feature_lengths"].tolist()


def cross_item_change(model: SpeechModel, seed: int = 1) -> float:
    """How much item 0's outputs move when only item 1 of the batch changes (0 for a correct model)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(N_FEATS, 50, generator=g), torch.randn(N_FEATS, 50, generator=g)
    feats, lengths = batch_of(a, b)
    out, _ = run(model, feats, lengths)
    feats2 = feats.clone()
    feats2[1] = torch.randn(N_FEATS, 50, generator=g) * 3
    out2, _ = run(model, feats2, lengths)
    assert not torch.allclose(out[1], out2[1])  # item 1 itself did change
    return (out[0] - out2[0]).abs().max().item()


def padding_change(model: SpeechModel, seed: int = 2) -> float:
    """How much an utterance's outputs move between running it alone and padded in a batch with a longer one."""
    g = torch.Generator().manual_seed(seed)
    short, long = torch.randn(N_FEATS, 37, generator=g), torch.randn(N_FEATS, 64, generator=g)
    alone, n_alone = run(model, short.unsqueeze(0), [37])
    feats, lengths = batch_of(short, long)
    padded, n_padded = run(model, feats, lengths)
    n = int(n_alone[0])
    assert n == int(n_padded[0]) and padded.shape[1] > n
    return (alone[0, :n] - padded[0, :n]).abs().max().item()


# ---------------------------------------------------------------- features

@pytest.mark.parametrize("n_mfcc, hop_ms", [(40, 10.0), (13, 20.0)])
@pytest.mark.parametrize("num_samples", [400, 4000, 16000, 16001, 23457])
def test_feature_extractor_shape_matches_num_frames(n_mfcc, hop_ms, num_samples):
    fe = FeatureExtractor(sample_rate=16000, n_mfcc=n_mfcc, n_mels=40, win_ms=25.0, hop_ms=hop_ms)
    feats = fe(torch.randn(num_samples))
    assert feats.shape == (n_mfcc, fe.num_frames(num_samples))
    assert feats.dtype == torch.float32


def test_feature_extractor_normalizes_each_coefficient_per_utterance():
    fe = FeatureExtractor.from_config(FeatureConfig(n_mfcc=20, n_mels=40))
    t = torch.arange(16000) / 16000
    feats = fe(0.3 * torch.sin(2 * torch.pi * 300 * t) + 0.01 * torch.randn(16000))
    assert feats.shape[0] == 20
    assert feats.mean(dim=-1).abs().max() < 1e-4
    assert (feats.std(dim=-1) - 1).abs().max() < 1e-3
    # louder input, same features: per-utterance normalization removes the gain
    loud = fe(3 * (0.3 * torch.sin(2 * torch.pi * 300 * t)))
    quiet = fe(0.3 * torch.sin(2 * torch.pi * 300 * t))
    assert torch.allclose(loud, quiet, atol=1e-2)


# ---------------------------------------------------------------- lengths

@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 10, 11, 99, 100, 1001])
def test_output_lengths_formula_matches_the_stem_conv(length):
    model = make_model()
    stemmed = model.stem(torch.zeros(1, 1, N_FEATS, length))
    assert model.output_lengths(torch.tensor([length])).tolist() == [stemmed.shape[-1]]


def test_model_output_lengths_and_time_dim():
    model = make_model()
    items = [torch.randn(N_FEATS, n) for n in (41, 80, 7, 63)]
    feats, lengths = batch_of(*items)
    log_probs, out_lengths = run(model, feats, lengths)
    expected = model.output_lengths(torch.tensor(lengths))
    assert out_lengths.tolist() == expected.tolist()
    assert log_probs.shape == (4, int(expected.max()), len(VOCAB))  # the longest item fills the time axis
    assert log_probs.shape[1] == out_lengths[1]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), atol=1e-5)


# ---------------------------------------------------------------- recurrence over time, not batch

def test_items_of_a_batch_are_independent():
    model = make_model(rnn_layers=3)
    assert len(model.rnns) == 3
    assert cross_item_change(model) < 1e-6


def test_recurrence_runs_over_time_in_both_directions():
    model = make_model(rnn_layers=2, cnn_layers=1)
    g = torch.Generator().manual_seed(3)
    # short (8 output frames): a random, untrained GRU forgets quickly, and the effect must stay measurable
    a, b = torch.randn(N_FEATS, 16, generator=g), torch.randn(N_FEATS, 16, generator=g)
    feats, lengths = batch_of(a, b)
    out, out_lengths = run(model, feats, lengths)
    last = int(out_lengths[0]) - 1

    late = feats.clone()
    late[0, :, -1] += 5.0  # the last input frame: the convolutions only see it at the last output frames
    out_late, _ = run(model, late, lengths)
    assert (out_late[0, 0] - out[0, 0]).abs().max() > 1e-4, "a late frame must reach the first outputs (backward)"

    early = feats.clone()
    early[0, :, 0] += 5.0
    out_early, _ = run(model, early, lengths)
    assert (out_early[0, last] - out[0, last]).abs().max() > 1e-4, "an early frame must reach the last outputs"
    assert torch.equal(out_early[1], out[1]) and torch.equal(out_late[1], out[1])


class TutorialBiGRU(nn.Module):
    """The tutorial's BidirectionalGRU: one bidirectional nn.GRU fed (B, T, D), no packing, no masking.
    Built with batch_first=(i == 0) it is the bug; with batch_first=True everywhere it recurs over time
    but runs its backward direction in from the padding."""

    def __init__(self, input_dim: int, hidden: int, batch_first: bool):
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.gru = nn.GRU(input_dim, hidden, batch_first=batch_first, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(nn.functional.gelu(self.norm(x)))
        return out


def tutorial_variant(model: SpeechModel, later_layers_batch_first: bool) -> SpeechModel:
    """The same model (stem, CNN, classifier) with the tutorial's GRU layers in place of its own."""
    variant = copy.deepcopy(model)
    torch.manual_seed(0)
    for i in range(len(variant.rnns)):
        variant.rnns[i] = TutorialBiGRU(RNN_DIM if i == 0 else 2 * RNN_DIM, RNN_DIM,
                                        batch_first=True if i == 0 else later_layers_batch_first)
    return variant.eval()


def test_independence_check_catches_the_tutorial_batch_first_bug():
    model = make_model(rnn_layers=2)
    broken = tutorial_variant(model, later_layers_batch_first=False)  # nn.GRU(batch_first=(i == 0))
    fixed = tutorial_variant(model, later_layers_batch_first=True)    # identical weights, batch_first=True
    assert not broken.rnns[1].gru.batch_first and fixed.rnns[1].gru.batch_first
    weights = zip(broken.state_dict().values(), fixed.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in weights)
    # same shapes out: nothing but the cross-item check tells them apart
    feats, lengths = batch_of(torch.randn(N_FEATS, 50), torch.randn(N_FEATS, 50))
    assert run(broken, feats, lengths)[0].shape == run(fixed, feats, lengths)[0].shape
    assert cross_item_change(broken) > 1e-3
    assert cross_item_change(fixed) < 1e-6
    assert cross_item_change(model) < 1e-6


def test_padding_check_catches_recurrence_over_padding():
    # batch-first everywhere but not length-aware: items are independent, yet the backward direction
    # starts in the padding
    model = make_model(rnn_layers=2, cnn_layers=0)
    unaware = tutorial_variant(model, later_layers_batch_first=True)
    assert cross_item_change(unaware) < 1e-6
    assert padding_change(unaware) > 1e-4
    assert padding_change(model) < 1e-5


@pytest.mark.parametrize("cnn_layers", [0, 1, 2])
def test_outputs_do_not_depend_on_batch_padding(cnn_layers):
    """An utterance alone and zero-padded in a batch (as training, evaluation and the pyfunc batch it) must
    give the same log-probs in fp32."""
    assert padding_change(make_model(rnn_layers=2, cnn_layers=cnn_layers)) < 1e-5


# ---------------------------------------------------------------- checkpoint

def test_checkpoint_round_trip(tmp_path):
    cfg = from_dict(RecognizerConfig, dict(n_mfcc=N_FEATS, cnn_layers=1, cnn_channels=4, rnn_layers=2, rnn_dim=16))
    model = SpeechModel.from_config(cfg, len(VOCAB))
    path = save_checkpoint(tmp_path / "sub" / "model.pt", cfg, model)
    assert path.is_file() and not path.with_suffix(".pt.tmp").exists()
    cfg2, model2 = load_checkpoint(path)
    assert cfg2 == cfg
    assert not model2.training
    feats, lengths = batch_of(torch.randn(N_FEATS, 30), torch.randn(N_FEATS, 21))
    assert torch.equal(run(model.eval(), feats, lengths)[0], run(model2, feats, lengths)[0])
