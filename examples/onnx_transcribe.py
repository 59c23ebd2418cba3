"""Transcribe audio files with an ONNX export of an asr model, without the asr package.

    asr export --format onnx --out model.onnx
    python examples/onnx_transcribe.py model.onnx speech.flac [more files...]

Prints the text (`file<TAB>text` per file when given several), as `asr transcribe` does with greedy decoding.
Needs only numpy, soundfile, torch, torchaudio and onnxruntime: everything else comes from the JSON document the
export carries in its metadata (`asr.json`: vocabulary, blank index, sample rate, MFCC settings and
normalization, decoder).
`asr transcribe` cuts audio longer than its --chunk_seconds (20 s) at quiet points and decodes the pieces
separately; this script runs each file whole, so on longer files the two can differ at the cuts.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF

METADATA_NAME = "asr.json"
KNOWN_VERSION = 1


class ConsumerError(Exception):
    """Something this script cannot use; printed as one line."""


def read_metadata(session: ort.InferenceSession, model_path: str) -> dict:
    """The export's asr.json, checked for what this script needs."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_NAME)
    if not text:
        raise ConsumerError(f"{model_path} carries no {METADATA_NAME} metadata (an export from before exports "
                            "carried it): export the model again with `asr export --format onnx`")
    meta = json.loads(text)
    if meta.get("format_version") != KNOWN_VERSION:
        raise ConsumerError(f"{model_path}: {METADATA_NAME} format_version {meta.get('format_version')}, this script "
                            f"reads version {KNOWN_VERSION}")
    if meta["decoder"]["type"] != "greedy":
        print(f"note: the model's decoder is {meta['decoder']['type']}; this script decodes greedily",
              file=sys.stderr)
    return meta


def load_wave(path: str, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform in [-1, 1] at `sample_rate`: channels averaged, then resampled."""
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 -- soundfile raises several types for missing or unreadable files
        raise ConsumerError(f"{path}: cannot read audio ({str(e).strip().splitlines()[0]})") from None
    wave = torch.from_numpy(np.ascontiguousarray(data)).mean(dim=1)
    return AF.resample(wave, rate, sample_rate) if rate != sample_rate else wave


def features(wave: torch.Tensor, meta: dict) -> torch.Tensor:
    """(n_mfcc, frames) MFCCs, normalized per utterance the way the model was trained."""
    spec = meta["features"]
    mfcc = torchaudio.transforms.MFCC(**spec["mfcc"])(wave)
    norm = spec["normalization"]
    mean = mfcc.mean(dim=-1, keepdim=True)
    if mfcc.shape[-1] > 1:
        std = mfcc.std(dim=-1, keepdim=True, correction=norm["std_correction"])
    else:
        std = torch.ones_like(mean)
    return ((mfcc - mean) / (std + norm["epsilon"])).masked_fill(std < norm["zero_below_std"], 0.0)


def greedy(log_probs: np.ndarray, meta: dict) -> str:
    """Best path: argmax per frame, merge repeats, drop blanks; spaces collapsed."""
    best = log_probs.argmax(axis=-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    vocab, blank = meta["vocabulary"], meta["blank"]
    return " ".join("".join(vocab[i] for i in best[keep] if i != blank).split())


def transcribe(session: ort.InferenceSession, meta: dict, path: str) -> str:
    wave = load_wave(path, meta["sample_rate"])
    if wave.numel() <= meta["features"]["mfcc"]["melkwargs"]["n_fft"] // 2:  # the centered STFT's reflect padding
        raise ConsumerError(f"{path}: audio is too short ({wave.numel()} samples at {meta['sample_rate']} Hz)")
    feats = features(wave, meta)
    lengths = np.array([feats.shape[-1]], dtype=np.int64)
    log_probs, out_lengths = session.run(["log_probs", "out_lengths"],
                                         {"features": feats[None].numpy(), "lengths": lengths})
    return greedy(log_probs[0, : int(out_lengths[0])], meta)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: onnx_transcribe.py MODEL.onnx AUDIO [AUDIO...]", file=sys.stderr)
        return 2
    model_path, *audio = argv
    try:
        try:
            session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own types for missing or invalid files
            raise ConsumerError(f"{model_path}: cannot load the ONNX model ({str(e).strip().splitlines()[0]})"
                                ) from None
        meta = read_metadata(session, model_path)
        for path in audio:
            text = transcribe(session, meta, path)
            print(text if len(audio) == 1 else f"{path}\t{text}", flush=True)
    except ConsumerError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
