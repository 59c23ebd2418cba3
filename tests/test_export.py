"""Export to TorchScript and ONNX: the exported files compute what the PyTorch model computes, on padded
batches and on batch sizes and lengths other than the traced ones, load without this package, and int8
dynamic quantization stays close to fp32."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize_layernorms
from torch import nn

from asr.config import FeatureConfig, RecognizerConfig, from_dict
from asr.decoding import greedy_decode
from asr.export import ExportError, export_model, max_abs_diff, quantize_dynamic
from asr.metrics import cer
from asr.model import BiGRU, SpeechModel
from asr.text import VOCAB

N_FEATS = FeatureConfig().n_mfcc
FP32_TOLERANCE = 1e-4


def make_model(seed: int = 0) -> SpeechModel:
    """The default architecture with smaller GRUs, in eval mode. Random LayerNorm gains and biases (fresh
    ones are exactly 1 and 0) and a larger classifier make the log-probs far from uniform (mean top
    probability ~0.4), so differences in them are not hidden by a flat output."""
    torch.manual_seed(seed)
    model = randomize_layernorms(SpeechModel.from_config(from_dict(RecognizerConfig, {"rnn_dim": 32}), len(VOCAB)))
    with torch.no_grad():
        for linear in (model.classifier[0], model.classifier[-1]):
            linear.weight.normal_(0, 3 / linear.in_features ** 0.5)
    return model


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded (B, n_feats, max length) batch, as training collates it."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(len(lengths), N_FEATS, max(lengths))
    for i, n in enumerate(lengths):
        feats[i, :, :n] = torch.randn(N_FEATS, n, generator=g)
    return feats, torch.tensor(lengths)


# export_model traces with (B=2, T=100); these differ in both, and are padded with different lengths
PADDED = [200, 151, 97]
OTHER_SHAPE = [333, 250]
SINGLE = [57]
WITH_EMPTY = [40, 0]  # an empty utterance: 0 output frames (ONNX's truncating Div once made it 1)


def run_torchscript(path: Path, feats: torch.Tensor, lengths: torch.Tensor):
    with torch.no_grad():
        return torch.jit.load(str(path))(feats, lengths)


def run_onnx(path: Path, feats: torch.Tensor, lengths: torch.Tensor):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"features": feats.numpy(), "lengths": lengths.numpy()})
    return tuple(torch.from_numpy(a) for a in out)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models: a second intra-op thread only adds synchronisation (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> SpeechModel:
    return make_model()


@pytest.fixture(scope="module")
def exports(model: SpeechModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    return {"torchscript": export_model(model, "torchscript", out / "model.pt"),
            "onnx": export_model(model, "onnx", out / "model.onnx", n_feats=N_FEATS)}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("lengths", [PADDED, OTHER_SHAPE, SINGLE, WITH_EMPTY], ids=["padded3", "B2xT333", "B1",
                                                                                   "empty"])
def test_export_matches_pytorch(model, exports, fmt, lengths):
    feats, lens = batch(lengths)
    with torch.no_grad():
        ref, ref_lengths = model(feats, lens)  # the model as trained and served: fused GRU on the CPU
    out, out_lengths = (run_torchscript if fmt == "torchscript" else run_onnx)(exports[fmt], feats, lens)
    assert out.shape == ref.shape
    assert out_lengths.tolist() == ref_lengths.tolist()
    assert max_abs_diff(model, exports[fmt], fmt, feats, lens) <= FP32_TOLERANCE


def test_onnx_model_is_valid_with_dynamic_axes(exports):
    import onnx

    proto = onnx.load(str(exports["onnx"]))
    onnx.checker.check_model(proto, full_check=True)

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    assert dims(proto.graph.input) == {"features": ["batch", N_FEATS, "time"], "lengths": ["batch"]}
    assert dims(proto.graph.output) == {"log_probs": ["batch", "frames", len(VOCAB)], "out_lengths": ["batch"]}
    assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert "GRU" in {n.op_type for n in proto.graph.node}


def test_torchscript_loads_without_asr(model, exports, tmp_path):
    """A fresh interpreter that cannot import `asr` loads and runs the file."""
    feats, lens = batch(PADDED, seed=3)
    torch.save({"features": feats, "lengths": lens}, tmp_path / "inputs.pt")
    script = (
        "import sys; sys.modules['asr'] = None\n"  # any import of asr now raises ImportError
        "import torch\n"
        "m = torch.jit.load(sys.argv[1])\n"
        "x = torch.load(sys.argv[2])\n"
        "with torch.no_grad(): out = m(x['features'], x['lengths'])\n"
        "torch.save(out, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(exports["torchscript"]), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "out.pt")], cwd=tmp_path, check=True, timeout=120,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    out, out_lengths = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        ref, ref_lengths = model(feats, lens)
    assert torch.equal(out_lengths, ref_lengths)
    valid = torch.arange(ref.shape[1]) < ref_lengths[:, None]
    assert (out - ref).abs()[valid].max() <= FP32_TOLERANCE


def test_export_is_in_eval_mode_and_leaves_model_unchanged(tmp_path):
    model = make_model().train()  # dropout 0.05 on: a traced training-mode model would be random
    fused = BiGRU.fused_on_cpu
    path = export_model(model, "torchscript", tmp_path)
    assert path == tmp_path / "acoustic_model.pt"
    assert model.training and all(m.training for m in model.modules())
    assert BiGRU.fused_on_cpu == fused and all("fused_on_cpu" not in vars(m) for m in model.rnns)
    feats, lens = batch(PADDED)
    first, _ = run_torchscript(path, feats, lens)
    again, _ = run_torchscript(path, feats, lens)
    assert torch.equal(first, again)
    assert max_abs_diff(model, path, "torchscript", feats, lens) <= FP32_TOLERANCE  # compared in eval mode
    assert model.training


def test_int8_close_to_fp32_and_exports(model, exports, tmp_path):
    quantized = quantize_dynamic(model)
    # every GRU and Linear replaced; the BiGRUs run the (quantized) nn.GRU modules, never the fused scan,
    # which would need float weights the quantized GRUs do not have
    assert not any(type(m) in (nn.GRU, nn.Linear) for m in quantized.modules())
    assert all(isinstance(m.forward_gru, torch.ao.nn.quantized.dynamic.GRU) and m.fused_on_cpu is False
               for m in quantized.rnns)
    assert all(type(m.forward_gru) is nn.GRU for m in model.rnns)  # the original is untouched

    feats, lens = batch(PADDED + [300, 12], seed=5)
    with torch.no_grad():
        ref, ref_lengths = model(feats, lens)
        out, out_lengths = quantized(feats, lens)
    assert torch.equal(out_lengths, ref_lengths)
    valid = torch.arange(ref.shape[1]) < ref_lengths[:, None]
    diff = (out - ref).abs()[valid].max().item()
    agree = (out.argmax(-1) == ref.argmax(-1))[valid].float().mean().item()
    assert 0 < diff < 0.5, diff  # measured ~0.3 (log-probs of ~-1 to -10); 0 would mean nothing was quantized
    assert agree >= 0.9, agree   # measured ~0.98
    # measured ~0.12: this random model's transcripts switch letters every frame or two, so each flipped
    # frame costs an edit (a trained model's long runs of blanks absorb most of them)
    assert cer(greedy_decode(ref, ref_lengths), greedy_decode(out, out_lengths)) <= 0.25

    path = export_model(model, "torchscript", tmp_path, quantize=True)
    assert path.name == "acoustic_model.int8.pt"
    assert path.stat().st_size < exports["torchscript"].stat().st_size
    other, other_lengths = batch(OTHER_SHAPE)
    loaded, loaded_lengths = run_torchscript(path, other, other_lengths)
    assert loaded.shape[:2] == (2, int(loaded_lengths.max())) and torch.isfinite(loaded).all()
    assert max_abs_diff(quantized, path, "torchscript", other, other_lengths) <= FP32_TOLERANCE


def test_int8_onnx_is_refused(model, tmp_path):
    with pytest.raises(ExportError, match="int8 ONNX"):
        export_model(model, "onnx", tmp_path / "m.onnx", quantize=True)
    with pytest.raises(ExportError, match="int8 ONNX"):
        export_model(quantize_dynamic(model), "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_requests(model, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(model, "tflite", tmp_path / "m")
    with pytest.raises(ExportError, match="unknown export format"):
        max_abs_diff(model, tmp_path / "m", "pt", *batch(SINGLE))

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    for out in (blocker / "model.pt", blocker / "sub" / "model.pt"):
        with pytest.raises(ExportError) as err:
            export_model(model, "torchscript", out)
        assert "is a file, not a folder" in str(err.value) and "\n" not in str(err.value)
    assert blocker.read_text() == "a file, not a folder"

    with pytest.raises(ExportError, match="takes 13 or 14 features"):
        export_model(model, "onnx", tmp_path / "m.onnx", n_feats=40)
    with pytest.raises(ExportError, match="not found"):
        max_abs_diff(model, tmp_path / "missing.onnx", "onnx", *batch(SINGLE))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_output_folder_names(model, tmp_path):
    assert export_model(model, "torchscript", f"{tmp_path}/new/") == tmp_path / "new" / "acoustic_model.pt"
    assert export_model(model, "torchscript", tmp_path / "new", quantize=True) == (
        tmp_path / "new" / "acoustic_model.int8.pt")
    assert export_model(model, "onnx", tmp_path / "new") == tmp_path / "new" / "acoustic_model.onnx"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "acoustic_model.int8.pt", "acoustic_model.onnx", "acoustic_model.pt"]
    import onnx

    # without n_feats the feature axis stays symbolic: the stride-2 stem takes 13 or 14 features alike
    features = onnx.load(str(tmp_path / "new" / "acoustic_model.onnx")).graph.input[0]
    assert [d.dim_param or d.dim_value for d in features.type.tensor_type.shape.dim] == ["batch", "n_feats", "time"]


def test_reexport_replaces_file_atomically(tmp_path):
    target = tmp_path / "deep" / "er" / "model.pt"
    first = export_model(make_model(seed=1), "torchscript", target)
    second = export_model(make_model(seed=2), "torchscript", target)
    assert first == second == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]  # no temp files left
    feats, lens = batch(SINGLE)
    assert max_abs_diff(make_model(seed=2), target, "torchscript", feats, lens) <= FP32_TOLERANCE
    assert max_abs_diff(make_model(seed=1), target, "torchscript", feats, lens) > 0.01
