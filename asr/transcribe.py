"""Inference: waveforms -> text with a trained checkpoint (the path MLflow's pyfunc model serves).

Audio of any length goes in: long recordings are cut at quiet points into pieces the model handles well
(`DecodeConfig.chunk_seconds`), pieces from all inputs are batched by length under a padded-audio budget, so
memory stays bounded whatever the input, and the pieces' texts are joined again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

from asr.audio import pieces
from asr.batching import pad_features, plan_batches
from asr.checkpoint import load_recognizer
from asr.config import DecodeConfig, RecognizerConfig
from asr.decoding import Decoder, decoder_key, make_decoder
from asr.features import FeatureExtractor
from asr.model import SpeechModel
from asr.precision import Decision, autocast, decide
from asr.text import ENGLISH_TEXT, TextNormalizer


class Transcriber:
    # Decoders kept for settings other than the configured ones (a request's lm_weight, say): torchaudio's beam
    # search fixes its settings when it is built, and building one loads its LM, so a client that repeats its
    # settings must not pay that per request; a few, since each holds its LM in memory.
    CACHED_DECODERS = 3

    def __init__(self, cfg: RecognizerConfig, model: SpeechModel, decode: DecodeConfig | None = None,
                 batch_seconds: float = 200.0, text: TextNormalizer = ENGLISH_TEXT):
        self.cfg = cfg
        self.text = text  # the model's vocabulary and normalization: decoders spell with it, references use it
        self.fp32_model = model.eval()
        self.features = FeatureExtractor.for_recognizer(cfg)
        self.batch_seconds = batch_seconds
        self.configure(decode or DecodeConfig())

    @classmethod
    def from_checkpoint(cls, path: str | Path, decode: DecodeConfig | None = None) -> Transcriber:
        cfg, model, text = load_recognizer(path)
        return cls(cfg, model, decode, text=text)

    def configure(self, decode: DecodeConfig) -> None:
        """Switches decoder, precision or chunk length (the model's weights stay as they are)."""
        self.decode_cfg = decode
        self.decoder: Decoder = make_decoder(decode, self.text)
        self.decoders: OrderedDict[tuple, Decoder] = OrderedDict()  # for other settings, least recently used first
        self._decoders_lock = threading.Lock()  # MLflow's scoring server predicts in several threads
        if decode.precision == "int8":
            from asr.export import quantize_dynamic

            self.model = quantize_dynamic(self.fp32_model)
            self.precision = Decision(None, "asked")
        else:
            self.model = self.fp32_model
            self.precision = decide(decode.precision, self.device, self.cfg, training=False)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (training scores on its own device)."""
        return next(self.model.parameters(), torch.empty(0)).device

    def precision_params(self) -> dict[str, str]:
        """What the acoustic model computes in and why, as params: precision_used (fp32, bf16 or int8) and
        precision_probe ("asked", or the probe's times for --precision auto)."""
        used = "int8" if self.decode_cfg.precision == "int8" else self.precision.name
        return {**self.precision.params(), "precision_used": used}

    def decoder_for(self, decode: DecodeConfig) -> Decoder:
        """The decoder for `decode`'s decoder settings: the configured one, a cached one, or a new one (cached, the
        least recently used dropped beyond CACHED_DECODERS)."""
        key = decoder_key(decode)
        if key == decoder_key(self.decode_cfg):
            return self.decoder
        with self._decoders_lock:
            if key in self.decoders:
                self.decoders.move_to_end(key)
                return self.decoders[key]
            decoder = self.decoders[key] = make_decoder(decode, self.text)
            while len(self.decoders) > self.CACHED_DECODERS:
                self.decoders.popitem(last=False)
            return decoder

    @property
    def sample_rate(self) -> int:
        return self.cfg.features.sample_rate

    @torch.inference_mode()
    def emissions(self, waves: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per wave, per piece: the model's (frames, classes) log-probabilities, float32."""
        chunks = [(w, p) for w, wave in enumerate(waves)
                  for p in pieces(wave, self.sample_rate, self.decode_cfg.chunk_seconds)]
        out: list[torch.Tensor | None] = [None] * len(chunks)
        sizes = [p.numel() for _, p in chunks]
        # Batches whose padded audio fits the budget, so memory stays bounded whatever the input.
        for batch in plan_batches(sizes, range(len(chunks)), max_items=len(chunks),
                                  max_frames=max(1, int(self.batch_seconds * self.sample_rate)), seed=None):
            padded, lengths = pad_features([self.features(chunks[i][1]) for i in batch])
            device = self.device
            with autocast(device, self.precision.dtype):
                log_probs, out_lengths = self.model(padded.to(device), lengths.to(device))
            for row, i in enumerate(batch):
                out[i] = log_probs[row, : out_lengths[row]].float().cpu()
        per_wave: list[list[torch.Tensor]] = [[] for _ in waves]
        for (w, _), lp in zip(chunks, out, strict=True):
            per_wave[w].append(lp)
        return per_wave

    def decode(self, emissions: list[list[torch.Tensor]], decoder: Decoder | None = None) -> list[str]:
        """Texts of `emissions()` output: every piece decoded, a wave's pieces joined with spaces."""
        decoder = decoder or self.decoder
        flat = [lp for wave in emissions for lp in wave]
        texts: list[str] = []
        for start in range(0, len(flat), 64):
            group = flat[start:start + 64]
            lengths = torch.tensor([lp.shape[0] for lp in group])
            padded = torch.nn.utils.rnn.pad_sequence(group, batch_first=True)
            texts += decoder(padded, lengths)
        joined, k = [], 0
        for wave in emissions:
            joined.append(" ".join(t for t in texts[k:k + len(wave)] if t))
            k += len(wave)
        return joined

    def transcribe(self, waves: list[torch.Tensor]) -> list[str]:
        """Mono waveforms at `sample_rate` -> one transcript each, in the model's characters."""
        return self.decode(self.emissions(waves))
