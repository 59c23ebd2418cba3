"""Small streaming-shaped models for the streaming tests: random ones (for equality with the offline model) and one
set by hand to say "a" over sound and blank over silence (for endpointing). No training needed."""

from __future__ import annotations

import torch

from asr.config import FeatureConfig, ModelConfig, RecognizerConfig
from asr.features import FeatureExtractor
from asr.model import SpeechModel
from asr.text import ENGLISH_TEXT
from asr.transcribe import Transcriber

VOCAB_SIZE = len(ENGLISH_TEXT.vocabulary)


def streaming_config(**model) -> RecognizerConfig:
    shape = dict(streaming=True, lookahead=2, cnn_layers=2, cnn_channels=4, rnn_layers=2, rnn_dim=24, dropout=0.0)
    return RecognizerConfig(FeatureConfig(), ModelConfig(**{**shape, **model}))


def random_streaming_model(cfg: RecognizerConfig, seed: int = 0) -> SpeechModel:
    """A random-initialized streaming model whose look-ahead weights and feature statistics are random too (as
    initialized, the look-ahead is the identity and the statistics 0 and 1, which would hide mistakes in them)."""
    torch.manual_seed(seed)
    model = SpeechModel.from_config(cfg, VOCAB_SIZE).eval()
    with torch.no_grad():
        if model.lookahead is not None:
            torch.nn.init.normal_(model.lookahead.conv.weight)
        model.mean.normal_(0, 20)
        model.std.uniform_(5, 30)
    return model


def energy_detector(streaming: bool = True) -> Transcriber:
    """A model set by hand to say "a" while there is sound and blank over silence: the stem passes the first MFCC
    (log energy) through, normalized (streaming: so that only digital silence is negative; bidirectional: per
    utterance, so below the utterance's mean); the LayerNorm of a 2-vector makes that a sign, the GRUs (no
    recurrence) and the classifier map the sign to "a" or blank."""
    shape = dict(streaming=True, lookahead=0) if streaming else {}
    cfg = RecognizerConfig(FeatureConfig(), ModelConfig(**shape, cnn_layers=0, cnn_channels=1, rnn_layers=1,
                                                        rnn_dim=2, dropout=0.0))
    model = SpeechModel.from_config(cfg, VOCAB_SIZE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        if streaming:
            silence = FeatureExtractor.for_recognizer(cfg)(torch.zeros(4000))[0, 5].item()  # c0 of digital silence
            model.mean[0], model.std[0] = silence + 20.0, 1.0
        model.stem.weight[0, 0, 1, 1] = 1.0                    # row 0 = c0, at the stem's centre frame
        model.proj.weight[:, 0] = torch.tensor([1.0, -1.0])    # +-(c0): LayerNorm turns it into its sign
        layer = model.rnns[0]
        layer.norm.weight.fill_(1.0)
        for gru in (layer.forward_gru, getattr(layer, "backward_gru", layer.forward_gru)):
            gru.weight_ih_l0[4:6] = 5 * torch.eye(2)           # candidate n = tanh(5 x); r = 0.5
            gru.bias_ih_l0[2:4] = -30.0                        # z = 0: h = n
        model.classifier[0].weight[:, :2] = torch.eye(2)       # the forward direction's output
        a = ENGLISH_TEXT.vocabulary.symbols.index("a")
        model.classifier[3].weight[a, 0] = model.classifier[3].weight[0, 1] = 10.0
    return Transcriber(cfg, model)
