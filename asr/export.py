"""Exports the acoustic model to TorchScript or ONNX, for serving without this package.

The exported model is `SpeechModel.forward`: features (B, n_mfcc, T) float32 and lengths (B,) int64 in,
log_probs (B, T', n_classes) and out_lengths (B,) out, batch and time dynamic. Feature extraction and decoding
stay with the caller, so every export carries what a caller needs to do them without this package: one JSON
document (`recognizer_metadata`: vocabulary, blank, sample rate, the torchaudio MFCC settings and the
per-utterance normalization, the time stride, the decoder settings), as the TorchScript extra file `asr.json`
and as the ONNX metadata property `asr.json`. examples/onnx_transcribe.py turns audio into text with it.

Both formats are traced from a CPU copy of the model in eval mode whose BiGRUs take the native nn.GRU path:
`asr.rnn.bigru_scan` is a Python autograd Function with a Python loop over time, which a trace would unroll
to the example's length. ONNX uses the TorchScript-based exporter (`dynamo=False`, ONNX GRU ops): torch
2.11's dynamo exporter fails on this model once the time axis is dynamic (a fake-tensor size mismatch inside
nn.GRU under torch.export; a static time axis, or a lone BiGRU with a dynamic one, export fine). Every export
is checked against the PyTorch model on a batch of another size and length than the one traced before it
replaces the output file.

int8: `quantize_dynamic` (torch dynamic quantization of nn.GRU and nn.Linear) for PyTorch and TorchScript.
Refused for ONNX: onnxruntime's dynamic quantizer has no int8 GRU, so it would quantize only the Linear and
Conv layers (~6% of the weights of the train-clean-5 recipe's model) while the fp32 GRUs still do nearly
all the work.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from asr import UserError, first_line
from asr.atomic import atomic_path
from asr.config import DecodeConfig, RecognizerConfig
from asr.features import NORM_EPSILON, SILENT_STD, FeatureExtractor
from asr.model import BiGRU, SpeechModel, UniGRU, conv_output_length
from asr.text import BLANK, ENGLISH_TEXT, TextNormalizer

FORMATS = ("torchscript", "onnx")
DEFAULT_NAMES = {"torchscript": "acoustic_model.pt", "onnx": "acoustic_model.onnx"}
EXTENSION_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}  # what a file's name says
INPUT_NAMES = ("features", "lengths")
OUTPUT_NAMES = ("log_probs", "out_lengths")
ONNX_OPSET = 17      # the first with LayerNormalization
VERIFY_TOLERANCE = 1e-3  # largest log-prob difference an export may show against PyTorch (measured 1e-5 or less)
METADATA_NAME = "asr.json"  # the TorchScript extra file and the ONNX metadata key that hold recognizer_metadata
METADATA_VERSION = 1        # raised when a key changes meaning, so consumers can refuse what they do not know


class ExportError(UserError):
    """A model that cannot be exported as asked, or an output path that cannot be written."""


def export_model(model: SpeechModel, fmt: str, out: str | Path, *, config: RecognizerConfig,
                 decode: DecodeConfig | None = None, quantize: bool = False, text: TextNormalizer = ENGLISH_TEXT
                 ) -> Path:
    """Writes `model` as TorchScript ('torchscript') or ONNX ('onnx') to `out` and returns the file's path.

    `config` is the recognizer the model was trained as (the checkpoint's RecognizerConfig): its feature
    settings go into the file with the vocabulary of `text` (the model's: English by default) and `decode`
    (default greedy), see `recognizer_metadata`, and
    its n_mfcc fixes the feature axis of the signature (the stride-2 stem alone would accept two counts, e.g.
    13 and 14). A config whose n_mfcc the model cannot take is refused before anything is traced.
    `out` is the file to write, or a folder (an existing one, or any path ending in '/') to write
    `acoustic_model.pt` / `.onnx` (`.int8.pt` when quantized) into; missing folders are created. The file is
    written to a temporary name next to it and renamed into place, so an existing file is replaced only by a
    complete, verified export.
    quantize=True applies `quantize_dynamic` first (TorchScript only). `model` itself is left unchanged.
    """
    fmt = _check_format(fmt)
    if fmt == "onnx" and (quantize or _is_quantized(model)):
        raise ExportError("int8 ONNX export is not supported: onnxruntime's dynamic quantization has no int8 GRU, "
                          "so it would leave the GRUs (nearly all the weights and compute) in fp32; export int8 as "
                          "torchscript, or fp32 ONNX")
    n_feats = _check_n_feats(model, config.features.n_mfcc)
    metadata = recognizer_metadata(model, config, decode, text)
    path = _output_path(out, DEFAULT_NAMES[fmt].replace(".pt", ".int8.pt") if quantize else DEFAULT_NAMES[fmt])
    prepared = quantize_dynamic(model) if quantize else _native_copy(model)

    try:
        with atomic_path(path) as tmp:
            if fmt == "torchscript":
                _write_torchscript(prepared, _example(n_feats, 2, 100, (100, 71)), tmp, metadata)
            else:
                _write_onnx(prepared, _example(n_feats, 2, 100, (100, 71)), tmp, metadata)
            # a batch of another size and length than traced: catches shapes baked into the export
            diff = max_abs_diff(prepared, tmp, fmt, *_example(n_feats, 3, 77, (77, 40, 9), seed=1))
            if not diff <= VERIFY_TOLERANCE:
                raise ExportError(f"the {fmt} export differs from the PyTorch model by {diff:.3g} in "
                                  f"log-probability (tolerance {VERIFY_TOLERANCE}); not written")
            if read_metadata(tmp, fmt) != metadata:
                raise ExportError(f"the {fmt} export does not read back the {METADATA_NAME} written into it; "
                                  "not written")
    except OSError as e:
        raise ExportError(f"could not write {path}: {e.strerror or e}") from None
    return path


def recognizer_metadata(model: SpeechModel, config: RecognizerConfig, decode: DecodeConfig | None = None,
                        text: TextNormalizer = ENGLISH_TEXT) -> dict:
    """What a consumer needs to turn audio into text with the exported model and no `asr` package: the JSON
    document every export carries. The MFCC settings are read from the FeatureExtractor the model was trained
    with, as keyword arguments of torchaudio.transforms.MFCC (which then reproduces the features exactly); the
    time stride from the model itself; the vocabulary, language and case rule from `text` (the model's)."""
    mfcc = FeatureExtractor.for_recognizer(config).mfcc
    mel, spec, scale = mfcc.MelSpectrogram, mfcc.MelSpectrogram.spectrogram, mfcc.MelSpectrogram.mel_scale
    stride = model.stem.stride[1]
    sample_rate = config.features.sample_rate
    return {
        "format_version": METADATA_VERSION,
        "inputs": {"features": "float32 (batch, n_mfcc, frames)", "lengths": "int64 (batch,): valid frames"},
        "outputs": {"log_probs": "float32 (batch, frames', classes): log-softmax over the vocabulary",
                    "out_lengths": "int64 (batch,): valid frames'"},
        "sample_rate": sample_rate,
        "audio": "mono (channels averaged), float in [-1, 1], resampled to sample_rate",
        "features": {
            "type": "mfcc",
            "mfcc": {  # torchaudio.transforms.MFCC(**this); the window is torch.hann_window, top_db 80 (fixed)
                "sample_rate": mfcc.sample_rate, "n_mfcc": mfcc.n_mfcc, "dct_type": mfcc.dct_type,
                "norm": mfcc.norm, "log_mels": mfcc.log_mels,
                "melkwargs": {"n_fft": mel.n_fft, "win_length": mel.win_length, "hop_length": mel.hop_length,
                              "f_min": mel.f_min, "f_max": mel.f_max, "pad": mel.pad, "n_mels": mel.n_mels,
                              "power": mel.power, "normalized": mel.normalized, "center": spec.center,
                              "pad_mode": spec.pad_mode, "norm": scale.norm, "mel_scale": scale.mel_scale},
            },
            "window": "hann",
            "top_db": mfcc.top_db,
            "normalization": normalization(config),
        },
        # a streaming model (unidirectional GRUs): output frame t hears `lookahead` output frames ahead, no more
        **({"streaming": True, "lookahead": model.lookahead_frames} if config.model.streaming else {}),
        "vocabulary": list(text.vocabulary.symbols),  # index -> character
        "blank": BLANK,
        "word_boundary": text.vocabulary.word_boundary,
        "language": text.language,  # of the transcripts; numbers are spelled out in it
        "lowercase": text.lowercase,
        "time_stride": stride,
        "output_frame_seconds": mel.hop_length * stride / sample_rate,
        "decoder": decoder_settings(decode or DecodeConfig()),
    }


def normalization(config: RecognizerConfig) -> dict:
    """How features are normalized before they reach the exported model (asr.features.FeatureExtractor.forward)."""
    if config.model.streaming:
        return {"type": "none: the model normalizes its raw MFCCs itself with the training set's statistics it "
                        "stores; the dB scale is per element (top_db null: 10 log10(max(power, 1e-10)))"}
    return {
        "type": "per-utterance mean and variance, over frames, per coefficient",
        "formula": "(x - mean) / (std + epsilon); std with Bessel's correction (1 when there is one "
                   "frame); coefficients with std < zero_below_std become 0",
        "epsilon": NORM_EPSILON, "std_correction": 1, "zero_below_std": SILENT_STD,
    }


def decoder_settings(decode: DecodeConfig) -> dict:
    """The decoder part of `recognizer_metadata`: greedy (best path: argmax per frame, merge repeats, drop
    blanks), or the beam search settings. An LM or lexicon is named, not included: the file stays beside."""
    if decode.decoder == "greedy" and not (decode.lm or decode.lexicon):
        return {"type": "greedy"}
    return {"type": "beam", "beam_size": decode.beam_size, "beam_threshold": decode.beam_threshold,
            "lm_weight": decode.lm_weight, "word_score": decode.word_score,
            "lm": Path(decode.lm).name if decode.lm else None,
            "lexicon": Path(decode.lexicon).name if decode.lexicon else None}


def read_metadata(exported: str | Path, fmt: str) -> dict:
    """The `recognizer_metadata` document an export carries. Raises ExportError for a file without one (an
    export made before exports carried it: export the model again)."""
    fmt = _check_format(fmt)
    exported = Path(exported)
    if not exported.is_file():
        raise ExportError(f"exported model not found: {exported}")
    if fmt == "torchscript":
        extra = {METADATA_NAME: ""}
        torch.jit.load(str(exported), map_location="cpu", _extra_files=extra)
        text = extra[METADATA_NAME]
    else:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(exported), load_external_data=False).metadata_props}
        text = props.get(METADATA_NAME, "")
    if not text:
        raise ExportError(f"{exported} carries no {METADATA_NAME} (vocabulary, features, decoder): it was exported "
                          "before exports carried them; export the model again")
    return json.loads(text)


def quantize_dynamic(model: SpeechModel) -> nn.Module:
    """An int8 copy of `model` for CPU inference: dynamic quantization of every nn.GRU and nn.Linear (weights
    stored int8, activations quantized on the fly). Still runs forward(features, lengths); `model` itself is
    left unchanged. Its BiGRUs take the native path: the quantized GRU modules have no float weight_ih_l0 etc.
    for `asr.rnn.bigru_scan` to use (the fused path would fail, not fall back to float weights)."""
    prepared = _native_copy(model)
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which has no dynamic int8 GRU
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*migrat.*torchao", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(prepared, {nn.GRU, nn.Linear}, dtype=torch.qint8, inplace=True)


def max_abs_diff(model: SpeechModel | nn.Module, exported: str | Path, fmt: str, features, lengths) -> float:
    """Runs `model` (in eval mode, on its device, as PyTorch would serve it) and the exported file (torch.jit.load
    or onnxruntime) on the same batch; returns the largest absolute difference of their log-probabilities over
    the valid frames (frame < out_lengths). Raises ExportError if shapes or out_lengths differ."""
    fmt = _check_format(fmt)
    exported = Path(exported)
    if not exported.is_file():
        raise ExportError(f"exported model not found: {exported}")
    features = torch.as_tensor(features, dtype=torch.float32).cpu()
    lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref, ref_lengths = (t.cpu() for t in model(features.to(device), lengths.to(device)))
    finally:
        model.train(training)

    if fmt == "torchscript":
        loaded = torch.jit.load(str(exported), map_location="cpu")
        with torch.no_grad():
            out, out_lengths = loaded(features, lengths)
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
        out, out_lengths = (torch.from_numpy(a) for a in session.run(
            list(OUTPUT_NAMES), {"features": features.numpy(), "lengths": lengths.numpy()}))

    if out.shape != ref.shape or not torch.equal(out_lengths.long(), ref_lengths.long()):
        raise ExportError(f"the {fmt} export gives log_probs {tuple(out.shape)} and out_lengths "
                          f"{out_lengths.tolist()}, PyTorch {tuple(ref.shape)} and {ref_lengths.tolist()}")
    valid = torch.arange(ref.shape[1]) < ref_lengths[:, None]
    if not valid.any():
        return 0.0
    return (out.float() - ref.float()).abs()[valid].max().item()


def format_for(out: str | Path, fmt: str | None) -> str:
    """The format to write `out` in: `fmt` when given (None: not given), else the one its extension names (.onnx:
    onnx; .pt, .ts: torchscript), else (a folder, another extension) torchscript. Raises ExportError when `fmt`
    contradicts the extension: TorchScript in model.onnx would be a file no ONNX runtime opens."""
    folder = Path(out).is_dir() or str(out).endswith(("/", os.sep))
    named = None if folder else EXTENSION_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        return named or FORMATS[0]
    if named and _check_format(fmt) != named:
        raise ExportError(f"--format {fmt} contradicts --out {out}, a {Path(out).suffix} file ({named}): drop "
                          f"--format, or name the file {Path(out).stem}{'.onnx' if fmt == 'onnx' else '.pt'}")
    return fmt


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (expected {' or '.join(FORMATS)})")
    return fmt


def _is_quantized(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def _check_n_feats(model: nn.Module, n_feats: int) -> int:
    """n_feats (the config's n_mfcc), checked against the model's stem and first projection."""
    stem = model.stem
    stem_feats = model.proj.in_features // stem.out_channels  # feature rows after the stem
    accepted = [n for n in range(1, 2 * stem_feats * stem.stride[0] + stem.kernel_size[0])
                if conv_output_length(n, stem, 0) == stem_feats]
    if n_feats not in accepted:
        raise ExportError(f"n_mfcc={n_feats} does not fit the model, which takes "
                          f"{' or '.join(map(str, accepted))} features per frame")
    return n_feats


def _output_path(out: str | Path, default_name: str) -> Path:
    path = Path(out)
    if path.is_dir() or str(out).endswith(("/", os.sep)):  # Path drops the trailing slash of 'new_folder/'
        path = path / default_name
    folder = path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # the root always exists
    if not existing.is_dir():
        raise ExportError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output folder {folder}: {e.strerror or e}") from None
    return path


def _native_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode whose BiGRUs run the nn.GRU modules (an instance attribute, so flipping
    `BiGRU.fused_on_cpu` on the class later does not change it)."""
    prepared = copy.deepcopy(model).cpu().eval()
    for m in prepared.modules():
        if isinstance(m, BiGRU | UniGRU):
            m.fused_on_cpu = False
    return prepared


def _example(n_feats: int, batch: int, frames: int, lengths: tuple[int, ...], seed: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_feats, frames, generator=g), torch.tensor(lengths, dtype=torch.int64)


def _write_torchscript(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path,
                       metadata: dict) -> None:
    # Traced, not scripted: torch.jit.script cannot compile BiGRU (getattr with computed names, the
    # custom autograd Function of the fused path).
    # Every size the graph uses is read from the inputs (aten::size), so batch and time stay dynamic.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={METADATA_NAME: json.dumps(metadata)})


def _write_onnx(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path, metadata: dict) -> None:
    import onnx

    feature_axes = {0: "batch", 2: "time"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        # h0 is not an input: the exporter builds the zero state from the input's batch size, which the
        # verification in export_model runs with a batch size other than the traced one
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*GRU", category=UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # nn.GRU's input checks
        # a streaming model's look-ahead slices with a step the constant folder skips (the graph is still right)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            model, example, str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes={"features": feature_axes, "lengths": {0: "batch"},
                          "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_NAME, json.dumps(metadata)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX model is invalid: {first_line(e)}") from None
