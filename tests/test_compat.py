"""Models registered before a change of this package's layout still load and transcribe with today's code: a
model version is registered by the code of an earlier commit (taken from git history), then read back through
`asr.load`, `asr transcribe --model-uri models:/...` and `asr validate`-style pyfunc prediction."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, asr_command, run_cli, subprocess_env

pytestmark = pytest.mark.slow  # subprocesses and a registry

# The last commit with the flat layout (every module at the top of the package).
FLAT_LAYOUT = "e3b6118f2969ea0e6b349c0b61aa66d76416448b"
NAME = "FlatLayoutModel"

# Run by the earlier commit's code: a small model with fixed random weights, logged and registered its way.
REGISTER = """
import sys
from pathlib import Path

import mlflow
import torch

import asr
from asr import checkpoint as ckpt, tracking
from asr.config import TrainConfig
from asr.model import SpeechModel
from asr.text import VOCAB

assert Path(asr.__file__).parent == Path(sys.argv[1]) / "asr", asr.__file__
cfg = TrainConfig(cnn_layers=1, cnn_channels=4, rnn_layers=1, rnn_dim=16)
torch.manual_seed(0)
model = SpeechModel.from_config(cfg, len(VOCAB)).eval()
tracking.setup("flat-layout")
with mlflow.start_run() as run:
    path = ckpt.save_checkpoint(Path("model.pt"), cfg, model)
    uri = tracking.log_model(path, Path(sys.argv[2]))
    print(tracking.register_and_promote(uri, sys.argv[3], run.info.run_id, 0.5, "always").version)
"""


@pytest.fixture(scope="module")
def flat_layout_model(tmp_path_factory) -> tuple[Path, Path]:
    """(tracking folder, audio file): a registry in which version 1 of NAME was registered by FLAT_LAYOUT's code."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{FLAT_LAYOUT}^{{commit}}"],
                      capture_output=True).returncode:
        pytest.skip(f"commit {FLAT_LAYOUT[:7]} is not in this clone's history (a shallow clone?)")
    root = tmp_path_factory.mktemp("flat")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", FLAT_LAYOUT, "asr"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    rng = np.random.default_rng(0)
    audio = root / "speech.wav"
    sf.write(audio, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    env = subprocess_env(f"sqlite:///{root}/mlflow.db") | {"PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", REGISTER, str(root), str(audio), NAME], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "1"
    return root, audio


def test_a_version_registered_by_the_flat_layout_loads_and_transcribes(flat_layout_model, monkeypatch):
    import mlflow
    import pandas as pd

    import asr
    from asr.audio import load_audio
    from asr.loading import load_pyfunc

    root, audio = flat_layout_model
    monkeypatch.chdir(root)
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    code = next(root.glob("mlruns/**/artifacts/code/asr"))
    assert (code / "train.py").is_file() and not (code / "training").exists()  # the flat layout's model
    before = list(sys.path)
    transcriber = asr.load(f"models:/{NAME}@production")
    assert sys.path == before  # the model's code/ (the flat layout's asr) is not left first on sys.path
    assert Path(inspect.getfile(type(transcriber))) == REPO / "asr" / "transcribe.py"  # read by today's code
    assert transcriber.sample_rate == 16000
    text = transcriber.transcribe([load_audio(audio, 16000)])[0]
    served = load_pyfunc(f"models:/{NAME}/Production").predict(pd.DataFrame({"audio": [str(audio)]}))
    assert served["text"][0] == text  # the same weights through the registry's stage and alias


def test_the_cli_transcribes_with_it(flat_layout_model):
    root, audio = flat_layout_model
    proc = run_cli(asr_command() + ["transcribe", "--model-uri", f"models:/{NAME}/1", "--json", str(audio)],
                   cwd=root, tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert proc.returncode == 0, proc.stderr
    assert '"text"' in proc.stdout


# Run in a fresh process, as `mlflow models serve` loads a model: the model's own code comes first on sys.path.
SERVE = """
import sys
import mlflow
import pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
import asr
assert asr.__file__.startswith(sys.argv[1]), asr.__file__
print(model.predict(pd.DataFrame({"audio": [sys.argv[2]]}))["text"][0])
"""


def test_a_logged_model_ships_only_the_model_side(flat_layout_model, tmp_path, monkeypatch):
    import mlflow
    import torch

    from asr.checkpoint import save_checkpoint
    from asr.config import RecognizerConfig, fields, from_dict
    from asr.model import SpeechModel
    from asr.text import VOCAB
    from asr.tracking.packaging import NOT_MODEL_SIDE, log_model

    _, audio = flat_layout_model
    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    cfg = from_dict(RecognizerConfig, dict(cnn_layers=1, cnn_channels=4, rnn_layers=1, rnn_dim=16))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "model.pt", cfg, SpeechModel.from_config(cfg, len(VOCAB)))
    settings = torch.load(checkpoint, weights_only=True)["config"]
    assert set(settings) == {f.name for f in fields(RecognizerConfig)}  # features and model shape, nothing else
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("model-side")
    with mlflow.start_run():
        uri = log_model(checkpoint, audio)
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    shipped = local / "code" / "asr"
    assert {p.name for p in shipped.iterdir() if p.is_dir() and p.name != "__pycache__"} == set()
    assert {p.name for p in shipped.glob("*.py")} == {p.name for p in (REPO / "asr").glob("*.py")} - set(NOT_MODEL_SIDE)
    env = subprocess_env() | {"ASR_SERVE_ALLOWED_ROOTS": str(audio.parent)}  # the audio goes in as a path
    proc = subprocess.run([sys.executable, "-c", SERVE, str(local), str(audio)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
