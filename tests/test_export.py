"""Export to TorchScript and ONNX: the exported files compute what the PyTorch model computes, on padded
batches and on batch sizes and lengths other than the traced ones, load without this package, and int8
dynamic quantization stays close to fp32. Every export carries what a consumer needs (vocabulary, blank,
features, decoder), and examples/onnx_transcribe.py turns audio into text with it and no `asr` package."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import MODEL_NAME, REPO, mlflow_store, one_line_error, randomize_layernorms, run_cli_here, split_dir
from torch import nn

from asr.audio import load_audio
from asr.config import DecodeConfig, RecognizerConfig, from_dict
from asr.decoding import greedy_decode
from asr.export import ExportError, export_model, max_abs_diff, quantize_dynamic, read_metadata, recognizer_metadata
from asr.features import FeatureExtractor
from asr.metrics import cer
from asr.model import BiGRU, SpeechModel
from asr.text import BLANK, VOCAB
from asr.transcribe import Transcriber

CONFIG = from_dict(RecognizerConfig, {"rnn_dim": 32})  # what make_model builds: the default features
N_FEATS = CONFIG.features.n_mfcc
FP32_TOLERANCE = 1e-4


def make_model(seed: int = 0) -> SpeechModel:
    """The default architecture with smaller GRUs, in eval mode. Random LayerNorm gains and biases (fresh
    ones are exactly 1 and 0) and a larger classifier make the log-probs far from uniform (mean top
    probability ~0.4), so differences in them are not hidden by a flat output."""
    torch.manual_seed(seed)
    model = randomize_layernorms(SpeechModel.from_config(CONFIG, len(VOCAB)))
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
    return {"torchscript": export_model(model, "torchscript", out / "model.pt", config=CONFIG),
            "onnx": export_model(model, "onnx", out / "model.onnx", config=CONFIG)}


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
    path = export_model(model, "torchscript", tmp_path, config=CONFIG)
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

    path = export_model(model, "torchscript", tmp_path, quantize=True, config=CONFIG)
    assert path.name == "acoustic_model.int8.pt"
    assert path.stat().st_size < exports["torchscript"].stat().st_size
    other, other_lengths = batch(OTHER_SHAPE)
    loaded, loaded_lengths = run_torchscript(path, other, other_lengths)
    assert loaded.shape[:2] == (2, int(loaded_lengths.max())) and torch.isfinite(loaded).all()
    assert max_abs_diff(quantized, path, "torchscript", other, other_lengths) <= FP32_TOLERANCE


def test_int8_onnx_is_refused(model, tmp_path):
    with pytest.raises(ExportError, match="int8 ONNX"):
        export_model(model, "onnx", tmp_path / "m.onnx", quantize=True, config=CONFIG)
    with pytest.raises(ExportError, match="int8 ONNX"):
        export_model(quantize_dynamic(model), "onnx", tmp_path / "m.onnx", config=CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests(model, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(model, "tflite", tmp_path / "m", config=CONFIG)
    with pytest.raises(ExportError, match="unknown export format"):
        max_abs_diff(model, tmp_path / "m", "pt", *batch(SINGLE))

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    for out in (blocker / "model.pt", blocker / "sub" / "model.pt"):
        with pytest.raises(ExportError) as err:
            export_model(model, "torchscript", out, config=CONFIG)
        assert "is a file, not a folder" in str(err.value) and "\n" not in str(err.value)
    assert blocker.read_text() == "a file, not a folder"

    with pytest.raises(ExportError, match="n_mfcc=40 does not fit the model, which takes 13 or 14 features"):
        export_model(model, "onnx", tmp_path / "m.onnx", config=from_dict(RecognizerConfig, {"n_mfcc": 40}))
    with pytest.raises(ExportError, match="not found"):
        max_abs_diff(model, tmp_path / "missing.onnx", "onnx", *batch(SINGLE))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_the_file_extension_says_the_format_unless_given(tmp_path):
    """`asr export --out model.onnx` writes ONNX (not TorchScript under an .onnx name); a --format that contradicts
    the extension is refused in one line before the model loads (the model named there does not exist)."""
    import onnx

    from asr.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "model.pt", CONFIG, make_model())
    for name, fmt in (("m.onnx", "onnx"), ("m.pt", "torchscript"), ("m.ts", "torchscript")):
        done = run_cli_here(["export", "--model-uri", str(checkpoint), "--out", str(tmp_path / name)], tmp_path)
        assert done.returncode == 0 and done.stdout.startswith(f"{tmp_path / name}: {fmt}, "), done.stderr
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    assert read_metadata(tmp_path / "m.ts", "torchscript")["blank"] == BLANK
    for fmt, out, says in (("torchscript", "x.onnx", "--format torchscript contradicts --out x.onnx, a .onnx file "
                                                     "(onnx): drop --format, or name the file x.pt"),
                           ("onnx", "x.pt", "--format onnx contradicts --out x.pt, a .pt file (torchscript): drop "
                                            "--format, or name the file x.onnx")):
        refused = run_cli_here(["export", "--format", fmt, "--out", out, "--model-uri", "no-such.pt"], tmp_path)
        assert one_line_error(refused) is None and refused.stderr.strip() == f"Error: {says}", refused.stderr
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.pt").exists()


def test_output_folder_names(model, tmp_path):
    assert export_model(model, "torchscript", f"{tmp_path}/new/", config=CONFIG) == (
        tmp_path / "new" / "acoustic_model.pt")
    assert export_model(model, "torchscript", tmp_path / "new", quantize=True, config=CONFIG) == (
        tmp_path / "new" / "acoustic_model.int8.pt")
    assert export_model(model, "onnx", tmp_path / "new", config=CONFIG) == tmp_path / "new" / "acoustic_model.onnx"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "acoustic_model.int8.pt", "acoustic_model.onnx", "acoustic_model.pt"]
    import onnx

    # the config's n_mfcc fixes the feature axis (the stride-2 stem alone would take 13 or 14 features alike)
    features = onnx.load(str(tmp_path / "new" / "acoustic_model.onnx")).graph.input[0]
    assert [d.dim_param or d.dim_value for d in features.type.tensor_type.shape.dim] == ["batch", N_FEATS, "time"]


def test_reexport_replaces_file_atomically(tmp_path):
    target = tmp_path / "deep" / "er" / "model.pt"
    first = export_model(make_model(seed=1), "torchscript", target, config=CONFIG)
    second = export_model(make_model(seed=2), "torchscript", target, config=CONFIG)
    assert first == second == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]  # no temp files left
    feats, lens = batch(SINGLE)
    assert max_abs_diff(make_model(seed=2), target, "torchscript", feats, lens) <= FP32_TOLERANCE
    assert max_abs_diff(make_model(seed=1), target, "torchscript", feats, lens) > 0.01


# --- what a consumer needs travels with the export ---------------------------------------------------------------

EXAMPLE = REPO / "examples" / "onnx_transcribe.py"


def load_example():
    """examples/onnx_transcribe.py as a module (it imports no asr: numpy, soundfile, torch, torchaudio, onnxruntime)."""
    spec = importlib.util.spec_from_file_location("onnx_transcribe", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exports_carry_vocabulary_blank_features_and_decoder(model, exports, tmp_path):
    """Both formats carry one JSON document, read here the way a consumer without `asr` reads it: the TorchScript
    extra file asr.json and the ONNX metadata property asr.json (through onnx and through onnxruntime). Its MFCC
    settings, given to torchaudio.transforms.MFCC as they are, reproduce the features the model was trained on."""
    import onnx
    import onnxruntime as ort
    import torchaudio

    extra = {"asr.json": ""}
    torch.jit.load(str(exports["torchscript"]), _extra_files=extra)
    from_torchscript = json.loads(extra["asr.json"])
    props = {p.key: p.value for p in onnx.load(str(exports["onnx"])).metadata_props}
    from_onnx = json.loads(props["asr.json"])
    session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["asr.json"]) == from_onnx == from_torchscript
    int8 = export_model(model, "torchscript", tmp_path, quantize=True, config=CONFIG)
    assert read_metadata(int8, "torchscript") == from_onnx == read_metadata(exports["onnx"], "onnx")

    meta = from_onnx
    assert meta["vocabulary"] == list(VOCAB) and len(meta["vocabulary"]) == 29
    assert meta["blank"] == BLANK == 0 and meta["vocabulary"][meta["word_boundary"]] == " "
    assert meta["sample_rate"] == CONFIG.features.sample_rate == 16000
    assert meta["time_stride"] == CONFIG.model.time_stride == model.stem.stride[1] == 3
    assert meta["output_frame_seconds"] == pytest.approx(0.03)
    assert meta["decoder"] == {"type": "greedy"}
    assert meta["features"]["normalization"]["epsilon"] == 1e-5

    wave = 0.1 * torch.randn(23456, generator=torch.Generator().manual_seed(0))
    expected = FeatureExtractor.from_config(CONFIG.features).mfcc(wave)
    assert expected.shape == (N_FEATS, 23456 // 160 + 1)
    assert torch.equal(torchaudio.transforms.MFCC(**meta["features"]["mfcc"])(wave), expected)

    beam = recognizer_metadata(model, CONFIG, DecodeConfig(decoder="beam", beam_size=7))["decoder"]
    assert beam["type"] == "beam" and beam["beam_size"] == 7 and beam["lm"] is None


def test_example_consumer_computes_the_features_and_greedy_text_asr_does(exports, tmp_path):
    """The example's audio loading, features and greedy decoding, fed from the export's metadata, give exactly what
    `asr` computes: on 44.1 kHz stereo (mixed down, resampled), on silence (constant coefficients become 0) and on
    audio of two frames, about the shortest the centered STFT takes."""
    example = load_example()
    meta = read_metadata(exports["onnx"], "onnx")
    extractor = FeatureExtractor.from_config(CONFIG.features)

    g = torch.Generator().manual_seed(1)
    stereo = tmp_path / "stereo-44k.wav"
    sf.write(stereo, (0.2 * torch.randn(2 * 44100, 2, generator=g)).numpy(), 44100, subtype="PCM_16")
    wave = example.load_wave(str(stereo), meta["sample_rate"])
    assert torch.equal(wave, load_audio(stereo))
    for w in (wave, torch.zeros(16000), 0.1 * torch.randn(300, generator=g)):
        ours, theirs = example.features(w, meta), extractor(w)
        assert ours.shape == theirs.shape and torch.equal(ours, theirs)
    assert extractor(torch.zeros(16000)).abs().max() == 0 and extractor(torch.zeros(300)).shape[-1] == 2

    log_probs = torch.randn(4, 60, len(VOCAB), generator=g)
    log_probs[:, ::3, BLANK] += 3  # runs of blanks and repeats, as CTC emits
    log_probs[:, 1::4, VOCAB.index(" ")] += 4
    lengths = torch.tensor([60, 41, 1, 0])
    expected = greedy_decode(log_probs, lengths)
    assert all(expected[:2]) and " " in expected[0]
    assert [example.greedy(lp[:n].numpy(), meta) for lp, n in zip(log_probs, lengths, strict=True)] == expected


@pytest.mark.slow  # a subprocess
def test_example_consumer_refuses_in_one_line(exports, tmp_path):
    """An ONNX file without asr.json (an export from before exports carried it) and unreadable audio: one
    `Error:` line naming the problem, exit 1, no traceback."""
    import onnx

    proto = onnx.load(str(exports["onnx"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    cases = {"no metadata": ([str(bare), str(junk)], "carries no asr.json"),
             "unreadable audio": ([str(exports["onnx"]), str(junk)], "junk.wav: cannot read audio"),
             "missing model": ([str(tmp_path / "missing.onnx"), str(junk)], "cannot load the ONNX model")}
    for name, (args, expected) in cases.items():
        proc = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert one_line_error(proc) is None, (name, proc.stderr)
        assert expected in proc.stderr, (name, proc.stderr)


def consumer_python(folder: Path) -> Path:
    """A Python without the `asr` package: a new virtual environment that sees this one's installed libraries
    (torch, torchaudio, onnxruntime, soundfile, numpy) through a .pth path line, which does not run the editable
    install's import hook that makes `asr` importable here."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    site_packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (Path(next(folder.glob("lib/python*/site-packages"))) / "libraries.pth").write_text("\n".join(site_packages) + "\n")
    return folder / "bin" / "python"


@pytest.mark.slow  # a trained model, subprocesses, real LibriSpeech
def test_onnx_export_transcribes_test_clean_without_asr_like_asr_transcribe(trained_store, tmp_path):
    """`asr export --format onnx`, then examples/onnx_transcribe.py in an isolated interpreter that cannot import
    `asr`, on a real test-clean FLAC: the same text as `asr transcribe` (greedy, the default) prints.
    The tiny model's outputs are near-ties (its best and second-best class can differ by ~5e-6 in log-probability,
    while ONNX Runtime's GRU and PyTorch's differ by ~5e-7), so the file is the one whose frames it separates
    most clearly: what is compared is the consumer's pipeline, not float rounding."""
    from click.testing import CliRunner

    from asr.cli import main

    run_id = trained_store.result.run_id
    transcriber = Transcriber.from_checkpoint(Path(trained_store.cfg.checkpoint.output_dir) / run_id / "model.pt")

    def smallest_margin(path: Path) -> float:
        [[log_probs]] = transcriber.emissions([load_audio(path)])
        top2 = log_probs.topk(2, dim=-1).values
        return (top2[:, 0] - top2[:, 1]).min().item()

    margin, source = max((smallest_margin(p), p) for p in sorted(split_dir("test-clean").rglob("*.flac")))
    assert margin > 1e-4, margin  # measured 1.6e-3 (2830-3980-0043)
    env = {"MLFLOW_TRACKING_URI": trained_store.uri}
    onnx_file = tmp_path / "model.onnx"
    exported = CliRunner().invoke(main, ["export", "--model-uri", run_id, "--format", "onnx", "--out",
                                         str(onnx_file)], env=env)
    assert exported.exit_code == 0, exported.output
    transcribed = CliRunner().invoke(main, ["transcribe", "--model-uri", run_id, str(source)], env=env)
    assert transcribed.exit_code == 0, transcribed.output
    expected = transcribed.stdout
    assert expected.strip(), "the model says nothing: the comparison would prove little"

    python = consumer_python(tmp_path / "consumer")
    no_asr = subprocess.run([str(python), "-I", "-c", "import asr"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert no_asr.returncode != 0 and "No module named 'asr'" in no_asr.stderr
    proc = subprocess.run([str(python), "-I", str(EXAMPLE), str(onnx_file), str(source)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected


@pytest.mark.slow  # a trained model with an LM
def test_export_writes_the_models_decoder_settings_without_opening_its_lm(trained_lm, tmp_path, monkeypatch):
    """An export names the model's LM and carries its tuned settings, but never opens the LM: from a copy of the
    training folder whose LM is gone (which the served model refuses), and from the registry with every LM load
    made to fail."""
    import shutil

    from click.testing import CliRunner

    import asr.decoding
    from asr.cli import main
    from asr.decoding import DECODER_FILE, DecoderError
    from asr.loading import load_transcriber

    folder = tmp_path / "run"
    shutil.copytree(Path(trained_lm.cfg.checkpoint.output_dir) / trained_lm.result.run_id, folder)
    (folder / "lm.arpa").unlink()
    with pytest.raises(DecoderError, match="lm.arpa: no such file"):
        load_transcriber(str(folder))  # what serving needs: the LM
    saved = json.loads((folder / DECODER_FILE).read_text())
    expected = {"type": "beam", "beam_size": saved["beam_size"], "beam_threshold": saved["beam_threshold"],
                "lm_weight": saved["lm_weight"], "word_score": saved["word_score"], "lm": "lm.arpa", "lexicon": None}

    def no_lm(*_):
        raise AssertionError("the export loaded an LM")

    monkeypatch.setattr(asr.decoding, "LoadedLM", no_lm)
    with mlflow_store(trained_lm.root):
        for name, ref in (("folder", str(folder)), ("registry", f"models:/{MODEL_NAME}@production")):
            out = tmp_path / f"{name}.pt"
            exported = CliRunner().invoke(main, ["export", "--model-uri", ref, "--out", str(out)],
                                          env={"MLFLOW_TRACKING_URI": trained_lm.uri})
            assert exported.exit_code == 0, (name, exported.output)
            assert read_metadata(out, "torchscript")["decoder"] == expected, name


def test_export_of_a_model_whose_lm_cannot_be_read_writes_its_decoder_settings(tmp_path):
    """`asr export` needs the acoustic model and the decoder's settings, not its LM: a run folder whose lm.arpa is
    no LM (which serving refuses) exports, naming the LM and carrying the tuned weights. The fast twin of the
    trained-model test above."""
    from click.testing import CliRunner

    from asr.checkpoint import save_checkpoint
    from asr.cli import main
    from asr.decoding import DecoderError, write_model_decoder
    from asr.loading import load_transcriber

    folder = tmp_path / "run"
    folder.mkdir()
    save_checkpoint(folder / "model.pt", CONFIG, make_model())
    (folder / "lm.arpa").write_bytes(b"\x00\x01 this is no ARPA file")
    write_model_decoder(DecodeConfig(decoder="beam", lm=str(folder / "lm.arpa"), beam_size=7, lm_weight=0.75,
                                     word_score=-1.0), folder, lm_order=3)
    with pytest.raises(DecoderError):
        load_transcriber(str(folder))  # what serving needs: the LM itself
    out = tmp_path / "exported.pt"
    exported = CliRunner().invoke(main, ["export", "--model-uri", str(folder), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert read_metadata(out, "torchscript")["decoder"] == {
        "type": "beam", "beam_size": 7, "beam_threshold": DecodeConfig().beam_threshold, "lm_weight": 0.75,
        "word_score": -1.0, "lm": "lm.arpa", "lexicon": None}
