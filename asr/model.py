"""DeepSpeech2-style acoustic model: residual CNN -> bidirectional GRUs -> per-frame character classifier.

A streaming model (`ModelConfig.streaming`) has unidirectional GRUs and a look-ahead layer after them instead, and
normalizes its (causal, un-normalized) features itself with statistics of the training set it stores: its output
frame t depends on features up to a fixed number of frames ahead only, so it can transcribe live
(asr.streaming)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asr.config import RecognizerConfig
from asr.rnn import bigru_scan
from asr.text import BLANK


class FeatureLayerNorm(nn.Module):
    """LayerNorm over the feature axis of a (B, C, F, T) map."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.norm = nn.LayerNorm(n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(2, 3)).transpose(2, 3)


class ResidualCNN(nn.Module):
    """Two same-padded 3x3 convolutions with pre-norm and a skip connection.

    Padded frames are zeroed before each convolution: norm and GELU make them non-zero, and the
    3x3 kernels would otherwise leak them into the last real frames (results would depend on the batch).
    """

    def __init__(self, channels: int, n_feats: int, dropout: float):
        super().__init__()
        self.pre1 = nn.Sequential(FeatureLayerNorm(n_feats), nn.GELU(), nn.Dropout(dropout))
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)  # pre2's LayerNorm would cancel a bias
        self.pre2 = nn.Sequential(FeatureLayerNorm(n_feats), nn.GELU(), nn.Dropout(dropout))
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.pre1(x) * mask)
        return x + self.conv2(self.pre2(y) * mask)


def reverse_within_length(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """(B, T) gather index that reverses each sequence's first `length` frames and leaves padding in place."""
    t = torch.arange(total, device=lengths.device)
    return torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)


class BiGRU(nn.Module):
    """One pre-norm bidirectional GRU layer over (B, T, D). Batch-first in every layer: time is axis 1.

    The backward direction runs on each sequence reversed within its own length, so padding never
    reaches a valid frame in either direction (results do not depend on what else is in the batch).
    On CUDA both directions run as two cuDNN nn.GRUs. On the CPU, torch's GRU spends its time on small
    per-step kernel calls (about 10 per step and direction, forward and again backward), so there the same
    weights drive `asr.rnn.bigru_scan`: both directions in one loop, 6 ops a step forward, 3 backward.
    """

    fused_on_cpu = True  # False: torch's own GRU kernels everywhere (the benchmark's naive path)

    def __init__(self, input_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        # the parameter holders (and checkpoint keys) on every device
        self.forward_gru = nn.GRU(input_dim, hidden, batch_first=True)
        self.backward_gru = nn.GRU(input_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.norm(x))
        rev = reverse_within_length(lengths.to(x.device), x.shape[1])[..., None]
        # bf16 autocast slows the CPU GRU kernel down; keep the recurrence in fp32 there.
        with torch.autocast("cpu", enabled=False):
            x = x.float()
            fused = self.fused_on_cpu and x.device.type == "cpu"
            fwd, bwd = (self._fused_gru if fused else self._native_gru)(x, rev)
        bwd = bwd.gather(1, rev.expand_as(bwd))
        return self.dropout(torch.cat([fwd, bwd], dim=-1))

    def _native_gru(self, x: torch.Tensor, rev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two nn.GRU modules on x and on x reversed within lengths (the latter's output still reversed)."""
        fwd, _ = self.forward_gru(x)
        bwd, _ = self.backward_gru(x.gather(1, rev.expand_as(x)))
        return fwd, bwd

    def _fused_gru(self, x: torch.Tensor, rev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What `_native_gru` returns, from one scan over both directions with the same weights."""
        grus = (self.forward_gru, self.backward_gru)
        weights = [torch.stack([getattr(g, name) for g in grus])
                   for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        inputs = torch.stack([x.transpose(0, 1), x.gather(1, rev.expand_as(x)).transpose(0, 1)])  # (2, T, B, D)
        fwd, bwd = bigru_scan(inputs, *weights).transpose(1, 2).unbind(0)                        # (B, T, H) each
        return fwd, bwd


class UniGRU(nn.Module):
    """One pre-norm unidirectional GRU layer over (B, T, D) (a streaming model's). Padding follows the valid frames,
    so it never reaches them. On the CPU it runs `asr.rnn.bigru_scan` with a stack of one direction (as BiGRU
    does with two), elsewhere the nn.GRU module; `step` carries the hidden state from one piece to the next."""

    fused_on_cpu = True  # False: torch's own GRU kernels everywhere (exports take that path)

    def __init__(self, input_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.forward_gru = nn.GRU(input_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.step(x)[0])

    def step(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) inputs and the state (B, H) after the frames before them (None: the start) -> the outputs
        (B, T, H) and the state after the last of them (B, H)."""
        x = nn.functional.gelu(self.norm(x))
        if x.shape[1] == 0:  # nothing new: the state stays
            return x.new_zeros(x.shape[0], 0, self.forward_gru.hidden_size).float(), h
        with torch.autocast("cpu", enabled=False):
            x = x.float()
            if self.fused_on_cpu and x.device.type == "cpu":
                g = self.forward_gru
                weights = [getattr(g, name)[None]
                           for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
                out = bigru_scan(x.transpose(0, 1)[None], *weights, None if h is None else h[None])[0].transpose(0, 1)
            else:
                out = self.forward_gru(x, None if h is None else h[None].contiguous())[0]
        return out, out[:, -1]


class LookAhead(nn.Module):
    """Deep Speech 2's row convolution: y_t = sum_{k=0..N} w_k * x_{t+k} per channel (depthwise), over (B, T, D),
    with zeros past the end. Starts as the identity (w_0 = 1, the others 0)."""

    def __init__(self, dim: int, frames: int):
        super().__init__()
        self.frames = frames
        self.conv = nn.Conv1d(dim, dim, frames + 1, groups=dim, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) whose frames past each sequence's end are zero -> (B, T, D)."""
        return self.window(nn.functional.pad(x, (0, 0, 0, self.frames)))

    def window(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T + N, D) -> the (B, T, D) outputs whose N future frames x holds (no padding added)."""
        return self.conv(x.transpose(1, 2)).transpose(1, 2)

    def step(self, x: torch.Tensor, pending: torch.Tensor | None, final: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next inputs (B, T, D) of a stream and the inputs still awaiting their future (B, <= N, D) (None: the
        start) -> the outputs (B, T', D) those complete and the inputs that still await theirs. final=True: the end
        of the stream (zeros past it, as `forward` pads; everything is out and nothing awaits). Piece by piece, the
        outputs are `forward`'s on the whole."""
        x = x if pending is None else torch.cat([pending, x], dim=1)
        if final:
            x = nn.functional.pad(x, (0, 0, 0, self.frames))
        ready = x.shape[1] - self.frames
        if ready <= 0:
            return x[:, :0], x
        return self.window(x), None if final else x[:, ready:]


def conv_output_length(length, conv: nn.Conv2d, dim: int):
    """Exact output size of `conv` along `dim` (0 = frequency, 1 = time): floor((n + 2p - k) / s) + 1, written
    with a non-negative numerator so that exporters which truncate integer division (ONNX) agree, even at n = 0."""
    k, s, p = conv.kernel_size[dim], conv.stride[dim], conv.padding[dim]
    return (length + 2 * p - k + s) // s


@dataclass
class StreamState:
    """What a streaming model's layers after its convolutions carry from one piece of a stream to the next
    (`SpeechModel.tail`): each GRU's hidden state (B, H) and the look-ahead's inputs awaiting their future."""

    hidden: list[torch.Tensor | None]  # one per GRU layer; None: the start
    pending: torch.Tensor | None = None

    @classmethod
    def start(cls, model: SpeechModel) -> StreamState:
        """The state before a stream's first frame."""
        return cls([None] * len(model.rnns))


class SpeechModel(nn.Module):
    """(B, n_mfcc, T) features -> (B, T', n_classes) log-probabilities, with T' = output_lengths(T)."""

    def __init__(self, n_feats: int, n_classes: int, *, cnn_layers: int, cnn_channels: int, rnn_layers: int,
                 rnn_dim: int, dropout: float, time_stride: int, streaming: bool = False, lookahead: int = 0):
        super().__init__()
        self.streaming = streaming
        if streaming:
            # the training set's feature statistics per coefficient (asr.training.normalization fits them): buffers,
            # so checkpoints, exports and the served model carry them
            self.register_buffer("mean", torch.zeros(n_feats))
            self.register_buffer("std", torch.ones(n_feats))
        # Striding in time cuts the recurrent steps, which dominate the cost; speech has under ~20 characters/s,
        # so 33-50 frames/s leave CTC room for blanks between repeated letters.
        self.stem = nn.Conv2d(1, cnn_channels, 3, stride=(2, time_stride), padding=1)
        stem_feats = conv_output_length(n_feats, self.stem, 0)
        self.cnn = nn.ModuleList([ResidualCNN(cnn_channels, stem_feats, dropout) for _ in range(cnn_layers)])
        self.proj = nn.Linear(cnn_channels * stem_feats, rnn_dim)
        if streaming:
            self.rnns = nn.ModuleList([UniGRU(rnn_dim, rnn_dim, dropout) for _ in range(rnn_layers)])
        else:
            self.rnns = nn.ModuleList(
                [BiGRU(rnn_dim if i == 0 else 2 * rnn_dim, rnn_dim, dropout) for i in range(rnn_layers)]
            )
        rnn_out = rnn_dim if streaming else 2 * rnn_dim
        self.lookahead = LookAhead(rnn_out, lookahead) if streaming and lookahead else None
        self.classifier = nn.Sequential(
            nn.Linear(rnn_out, rnn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(rnn_dim, n_classes)
        )

    @classmethod
    def from_config(cls, cfg: RecognizerConfig, n_classes: int) -> SpeechModel:
        m = cfg.model
        return cls(cfg.features.n_mfcc, n_classes, cnn_layers=m.cnn_layers, cnn_channels=m.cnn_channels,
                   rnn_layers=m.rnn_layers, rnn_dim=m.rnn_dim, dropout=m.dropout, time_stride=m.time_stride,
                   streaming=m.streaming, lookahead=m.lookahead if m.streaming else 0)

    @property
    def lookahead_frames(self) -> int:
        """Future frames (at the output rate) the look-ahead layer sees: 0 without one."""
        return self.lookahead.frames if self.lookahead is not None else 0

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """A streaming model's (B, n_mfcc, T) raw features, normalized with the stored statistics (per frame)."""
        return (features - self.mean[:, None]) / self.std[:, None]

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Exact frame counts after the strided stem."""
        return conv_output_length(lengths, self.stem, 1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.streaming:  # normalized padding would be -mean/std: re-zeroed, so it never leaks into valid frames
            valid = torch.arange(features.shape[-1], device=features.device) < lengths.to(features.device)[:, None]
            features = self.normalize(features) * valid[:, None, :].to(features.dtype)
        x = self.stem(features.unsqueeze(1))                       # (B, C, F', T')
        out_lengths = self.output_lengths(lengths.to(x.device))
        mask = (torch.arange(x.shape[-1], device=x.device) < out_lengths[:, None])[:, None, None, :].to(x.dtype)
        for block in self.cnn:
            x = block(x, mask)
        return self.tail(x, out_lengths), out_lengths

    def tail(self, x: torch.Tensor, lengths: torch.Tensor | None, state: StreamState | None = None,
             final: bool = True) -> torch.Tensor:
        """Everything after the convolutions: their map (B, C, F', T') -> float32 log-probabilities (B, T', classes).

        state=None: whole utterances of `lengths` (B,) valid frames each (`forward`). With a StreamState (a
        streaming model; lengths unused), x is the next piece of a stream, without padding: the GRUs carry their
        hidden states in `state` and the look-ahead the frames awaiting their future, so the rows returned, those
        whose look-ahead is complete (T' - lookahead or fewer; all of them at `final`, the stream's end), are, piece
        after piece, the ones `forward` gives on the whole (asr.streaming.ModelStream)."""
        b, c, f, t = x.shape
        x = self.proj(x.permute(0, 3, 1, 2).reshape(b, t, c * f))  # (B, T', D)
        for i, rnn in enumerate(self.rnns):
            if state is None:
                x = rnn(x, lengths)
            else:
                x, state.hidden[i] = rnn.step(x, state.hidden[i])
        if self.lookahead is not None:  # frames past the end are zeros to it
            if state is None:
                valid = torch.arange(t, device=x.device) < lengths.to(x.device)[:, None]
                x = self.lookahead(x * valid[..., None].to(x.dtype))
            else:
                x, state.pending = self.lookahead.step(x, state.pending, final)
        return self.classifier(x).float().log_softmax(dim=-1)


def ctc_loss_sum(log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: dict[str, torch.Tensor],
                 device: torch.device) -> torch.Tensor:
    """Sum over the batch of each utterance's CTC loss per target label, in fp32. Dividing the sum by the
    *global* batch size (not this rank's share) makes data-parallel gradients equal single-process ones."""
    losses = nn.functional.ctc_loss(log_probs.float().transpose(0, 1), batch["labels"].to(device), out_lengths,
                                    batch["label_lengths"].to(device), blank=BLANK, reduction="none",
                                    zero_infinity=True)
    return (losses / batch["label_lengths"].to(device).clamp(min=1)).sum()
