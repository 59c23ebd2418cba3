"""A trained model as an MLflow pyfunc: its checkpoint and its own decoder (decoder.json, LM, lexicon), the model
side of this package, the requirements that code needs, a signature and an input example."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow

import asr
from asr.tracking.requirements import model_requirements

# Top-level modules that are not the model side: the command line and the commands' settings. Everything else at
# the top level of the package is what a served model imports; the subpackages (data, training, tracking,
# evaluation, bench) are never shipped, nor the command line's live input (stdin, files paced, the microphone).
NOT_MODEL_SIDE = ("cli.py", "__main__.py", "settings.py", "live.py", "stream_server.py")


def model_side(dest: Path) -> Path:
    """Copies the package's model side (its top-level modules, what the pyfunc imports at load and predict time)
    to `dest`/asr and returns that folder: a served model carries its recognizer, not the trainer."""
    package, target = Path(asr.__file__).parent, dest / "asr"
    target.mkdir(parents=True)
    for module in sorted(package.glob("*.py")):
        if module.name not in NOT_MODEL_SIDE:
            shutil.copy2(module, target / module.name)
    return target


def log_model(checkpoint: Path, input_example_audio: Path, decoder: dict[str, Path] | None = None) -> str:
    """Logs the checkpoint as a pyfunc model (audio in, text out) in the active run; returns its model URI.
    `decoder` holds the files of the model's own decoder, as artifacts named "decoder" (its decoder.json), "lm"
    and "lexicon" (optional), which the pyfunc decodes with by default; without it, the model decodes greedily."""
    import pandas as pd

    from asr.pyfunc import audio_to_base64, signature

    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(asr.__file__).with_name("pyfunc.py")),
            artifacts={"checkpoint": str(checkpoint), **{k: str(v) for k, v in (decoder or {}).items()}},
            code_paths=[str(model_side(Path(tmp)))],
            signature=signature(),
            input_example=pd.DataFrame({"audio": [audio_to_base64(input_example_audio)]}),
            pip_requirements=model_requirements(),
        )
    return info.model_uri
