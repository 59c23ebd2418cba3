"""The fused CPU GRU scan (asr.rnn) against torch's nn.GRU: outputs and every gradient, padding, no-grad paths.

BiGRU keeps its two nn.GRU modules as parameter holders; on the CPU its forward runs `_fused_gru` and on
CUDA `_native_gru` (the modules themselves). Both take the same (x, reversal index), so the tests compare
them directly, and whole layers and models with `_fused_gru` swapped for `_native_gru`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asr import rnn
from asr.model import BiGRU, SpeechModel, reverse_within_length
from asr.rnn import bigru_scan
from asr.text import VOCAB

LENGTHS = [23, 1, 7, 20, 16]  # the longest fills the batch; one item of a single frame


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference, relative to b's largest magnitude where that is above 1 (fp32 sums of many terms)."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1)).item()


def random_layer(input_dim: int, hidden: int, seed: int = 0) -> BiGRU:
    """A layer whose weights are larger than nn.GRU's init (saturating gates too), with random LayerNorm."""
    torch.manual_seed(seed)
    layer = BiGRU(input_dim, hidden, dropout=0.0)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.6, 0.6)
    return layer


def native(layer: BiGRU):
    """The layer run through torch's nn.GRU modules, as on CUDA."""
    layer._fused_gru = layer._native_gru  # instance attribute: shadows the method for this object only
    return layer


def outputs_and_grads(layer: BiGRU, x: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor):
    x = x.clone().requires_grad_()
    layer.zero_grad()
    out = layer(x, lengths)
    (out * weight).sum().backward()
    return out.detach(), x.grad, {name: p.grad.clone() for name, p in layer.named_parameters()}


@pytest.fixture(params=[rnn.BLOCK_ROWS, 5, 12], ids=["one-block", "1-step-blocks", "2-step-blocks"])
def block_rows(request, monkeypatch):
    """The scan works a block of steps at a time (BLOCK_ROWS // batch); small blocks test their seams,
    including a last block shorter than the others."""
    monkeypatch.setattr(rnn, "BLOCK_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("input_dim, hidden", [(12, 8), (16, 16), (6, 20)])
def test_fused_layer_matches_nn_gru_outputs_and_gradients(input_dim, hidden, block_rows):
    layer = random_layer(input_dim, hidden)
    reference = native(random_layer(input_dim, hidden))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(LENGTHS), max(LENGTHS), input_dim, generator=g)
    lengths = torch.tensor(LENGTHS)
    weight = torch.randn(len(LENGTHS), max(LENGTHS), 2 * hidden, generator=g)  # a random upstream gradient

    out, grad_x, grads = outputs_and_grads(layer, x, lengths, weight)
    ref_out, ref_grad_x, ref_grads = outputs_and_grads(reference, x, lengths, weight)
    assert out.shape == (len(LENGTHS), max(LENGTHS), 2 * hidden)
    assert max_error(out, ref_out) < 1e-5  # every frame, padding included: the same recurrence
    assert max_error(grad_x, ref_grad_x) < 1e-5
    assert grads.keys() == ref_grads.keys() and len(grads) == 10
    for name, grad in grads.items():
        assert max_error(grad, ref_grads[name]) < 1e-5, name
        assert grad.abs().max() > 0, name


def test_fused_gru_matches_native_gru_on_each_direction():
    """The two halves themselves, on inputs that need no LayerNorm: forward direction and reversed one."""
    layer = random_layer(5, 7)
    x = torch.randn(3, 9, 5)
    rev = reverse_within_length(torch.tensor([9, 4, 6]), 9)[..., None]
    for fused, ref in zip(layer._fused_gru(x, rev), layer._native_gru(x, rev), strict=True):
        assert fused.shape == ref.shape == (3, 9, 7)
        assert (fused - ref).abs().max() < 1e-6


def test_bigru_scan_gradcheck_float64(block_rows):
    torch.manual_seed(0)
    steps, batch, dim, hidden = 5, 3, 4, 3  # blocks of 1, 4 and 5 steps
    inputs = [torch.randn(2, steps, batch, dim), torch.randn(2, 3 * hidden, dim), torch.randn(2, 3 * hidden, hidden),
              torch.randn(2, 3 * hidden), torch.randn(2, 3 * hidden)]
    inputs = [t.double().mul(0.7).requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(bigru_scan, inputs)


def test_bigru_scan_matches_nn_gru_float64():
    """Each of the two scans is exactly an nn.GRU with those weights (to fp64 rounding)."""
    torch.manual_seed(0)
    grus = [nn.GRU(6, 5).double() for _ in range(2)]
    x = torch.randn(2, 11, 4, 6, dtype=torch.float64)
    weights = [torch.stack([getattr(g, name) for g in grus])
               for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    out = bigru_scan(x, *weights)
    for d, gru in enumerate(grus):
        assert (out[d] - gru(x[d])[0]).abs().max() < 1e-12


def test_padding_does_not_reach_valid_frames_or_their_gradients(block_rows):
    layer = random_layer(12, 8)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(len(LENGTHS), max(LENGTHS), 12, generator=g)
    lengths = torch.tensor(LENGTHS)
    valid = (torch.arange(max(LENGTHS)) < lengths[:, None])[..., None]
    weight = torch.randn(len(LENGTHS), max(LENGTHS), 16, generator=g) * valid  # loss on valid frames only
    noisy = torch.where(valid, x, 100 * torch.randn(x.shape, generator=g))

    out, grad_x, grads = outputs_and_grads(layer, x, lengths, weight)
    out2, grad_x2, grads2 = outputs_and_grads(layer, noisy, lengths, weight)
    assert torch.equal(out * valid, out2 * valid)
    assert torch.equal(grad_x, grad_x2) and (grad_x * ~valid).abs().max() == 0
    for name, grad in grads.items():
        assert torch.equal(grad, grads2[name]), name

    # and each item alone, unpadded, gives its frames of the batch
    for i, n in enumerate(LENGTHS):
        alone = layer(x[i:i + 1, :n], lengths[i:i + 1]).detach()
        assert (alone[0] - out[i, :n]).abs().max() < 1e-6


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "bf16_autocast"])
def test_inference_paths_match_training_path(mode):
    layer = random_layer(12, 8).eval()
    x = torch.randn(len(LENGTHS), max(LENGTHS), 12)
    lengths = torch.tensor(LENGTHS)
    if mode == "bf16_autocast":
        # bf16 before the recurrence as after a bf16 projection; the GRU itself stays fp32, as nn.GRU's
        x = x.bfloat16()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x, lengths)
            ref = native(random_layer(12, 8).eval())(x, lengths)
        assert out.dtype == ref.dtype == torch.float32
        assert max_error(out, ref) < 1e-5
        return
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        out = layer(x, lengths)
    assert not out.requires_grad
    assert torch.equal(out, layer(x, lengths).detach())


def test_fused_model_matches_native_model_gradients():
    """A whole SpeechModel (2 GRU layers, dropout off) against the same one run on nn.GRU."""
    def model():
        torch.manual_seed(0)
        m = SpeechModel(13, len(VOCAB), cnn_layers=1, cnn_channels=4, rnn_layers=2, rnn_dim=16, dropout=0.0,
                        time_stride=2)
        return m

    fused, ref = model(), model()
    for layer in ref.rnns:
        native(layer)
    feats, lengths = torch.randn(3, 13, 40), torch.tensor([40, 33, 9])
    for m in (fused, ref):
        log_probs, _ = m(feats, lengths)
        log_probs.sum().backward()
    assert max_error(fused(feats, lengths)[0], ref(feats, lengths)[0]) < 1e-5
    for (name, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters(), strict=True):
        assert max_error(p.grad, q.grad) < 1e-5, name


def test_state_dict_keys_are_the_nn_gru_ones():
    """Checkpoints saved before the fused scan load unchanged: the parameters are still the nn.GRUs'."""
    gru_keys = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert list(BiGRU(4, 3, 0.0).state_dict()) == ["norm.weight", "norm.bias",
                                                   *(f"forward_gru.{k}" for k in gru_keys),
                                                   *(f"backward_gru.{k}" for k in gru_keys)]


def test_a_stack_of_one_direction_is_an_nn_gru_and_takes_an_initial_state(block_rows):
    """A streaming model's unidirectional layer runs the same scan with one GRU: outputs and gradients match
    nn.GRU, and an initial state h0 continues a sequence exactly where its first part stopped."""
    torch.manual_seed(0)
    gru = nn.GRU(6, 5).double()
    weights = [getattr(gru, name)[None] for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    x = torch.randn(1, 11, 4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(bigru_scan, [x.mul(0.7).requires_grad_(), *weights])
    out = bigru_scan(x, *weights)
    assert (out[0] - gru(x[0])[0]).abs().max() < 1e-12
    with torch.no_grad():
        first = bigru_scan(x[:, :4], *weights)
        rest = bigru_scan(x[:, 4:], *weights, first[:, -1])
    assert (torch.cat([first, rest], dim=1) - out).abs().max() < 1e-12
    with pytest.raises(ValueError, match="h0"):
        bigru_scan(x, *[w.detach().requires_grad_() for w in weights], first[:, -1])
