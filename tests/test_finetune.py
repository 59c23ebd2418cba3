"""Fine-tuning (--init_from, --freeze): a run starts from a registered model, a run's model or a checkpoint file,
takes its architecture, re-initializes an output layer of other classes, keeps frozen blocks bit-identical (through
a resume too), records its parent on the run, the registered version and the model card, and lowers the CER of a
registered model on a second split (issue 16, acceptance 2)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    MODEL_NAME,
    REPO,
    asr_command,
    make_tiny_config,
    one_line_error,
    only_run_dir,
    run_cli_here,
    short_split,
    split_dir,
    subprocess_env,
    tiny_args,
)
from mlflow import MlflowClient

import asr
from asr import checkpoint as ckpt
from asr.config import (
    MODEL_BLOCKS,
    ConfigError,
    FeatureConfig,
    ModelConfig,
    RecognizerConfig,
    from_dict,
    load_settings,
    to_dict,
)
from asr.evaluation.evaluate import score_split, utterances_of
from asr.model import SpeechModel
from asr.settings import TrainConfig
from asr.text import VOCAB
from asr.tracking.lineage import PARENT_SHA256_TAG, PARENT_TAG
from asr.training import finetune
from asr.training import train as train_module
from asr.training.state import TrainingInterrupted
from asr.training.train import train

SHAPE = dict(cnn_layers=1, cnn_channels=6, rnn_layers=1, rnn_dim=24)  # the parents' (tiny, unlike TINY's)


def save_parent(path: Path, classes: int = len(VOCAB), vocab: tuple[str, ...] = VOCAB, seed: int = 1) -> Path:
    """A model checkpoint of SHAPE with `classes` output classes named by `vocab`, as training writes one."""
    torch.manual_seed(seed)
    recognizer = RecognizerConfig(FeatureConfig(), ModelConfig(**SHAPE))
    model = SpeechModel.from_config(recognizer, classes)
    state = {"config": to_dict(recognizer), "vocab": list(vocab),
             "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    return ckpt.atomic_save(state, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- settings


def test_the_blocks_freeze_names_are_the_models_own():
    model = SpeechModel.from_config(RecognizerConfig(FeatureConfig(), ModelConfig(**SHAPE)), len(VOCAB))
    assert tuple(name for name, _ in model.named_children()) == tuple(b for b in MODEL_BLOCKS if b != "lookahead")
    streaming = SpeechModel.from_config(RecognizerConfig(FeatureConfig(), ModelConfig(**SHAPE, streaming=True)),
                                        len(VOCAB))
    assert tuple(name for name, _ in streaming.named_children()) == MODEL_BLOCKS


@pytest.mark.parametrize("settings, message", [
    (dict(init_from="p.pt", freeze="cnn,rnn"), "--freeze: rnn not among stem, cnn, proj, rnns, lookahead, classifier"),
    (dict(freeze="cnn"), "--freeze cnn needs --init_from"),
    (dict(init_from="p.pt", freeze=",".join(MODEL_BLOCKS)), "names every block: nothing would train"),
])
def test_freeze_settings_that_cannot_work_are_refused_as_the_settings_are_built(settings, message):
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, settings)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_setting_that_contradicts_the_parent_is_refused_and_the_rest_are_taken_from_it(tmp_path: Path):
    parent = finetune.find_parent(str(save_parent(tmp_path / "parent.pt")))
    cfg = from_dict(TrainConfig, dict(init_from=parent.reference, rnn_dim=48, hop_ms=12.5, dropout=0.3))
    with pytest.raises(ConfigError) as e:
        finetune.take_architecture(cfg, parent, {"init_from", "rnn_dim", "hop_ms", "dropout"})
    assert str(e.value) == (f"--init_from {parent.reference}: --hop_ms 12.5 (the parent's: 10.0), --rnn_dim 48 (the "
                            "parent's: 24): a fine-tuned model keeps its parent's features and shape; leave these "
                            "out (--dropout may change)")
    taken = finetune.take_architecture(cfg, parent, {"init_from", "dropout"})
    assert (taken.model.rnn_dim, taken.model.cnn_channels, taken.features.hop_ms) == (24, 6, 10.0)
    assert taken.model.dropout == 0.3  # given, and free to change
    assert finetune.take_architecture(cfg, parent, {"init_from"}).model.dropout == ModelConfig().dropout


# ---------------------------------------------------------------- weights


def test_an_output_layer_of_other_classes_is_reinitialized_and_every_other_layer_taken(tmp_path: Path):
    path = save_parent(tmp_path / "parent.pt", classes=len(VOCAB) + 2, vocab=(*VOCAB, "é", "ñ"))
    parent = finetune.find_parent(str(path))
    assert (parent.name, parent.sha256) == (str(path.resolve()), sha256(path))
    torch.manual_seed(0)
    model = SpeechModel.from_config(parent.recognizer, len(VOCAB))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    said: list[str] = []
    assert finetune.start_from(model, parent, VOCAB, said.append)
    assert said == ["init_from: output layer re-initialized (the parent has 31 output classes, this run 29); every "
                    "other layer starts from the parent's weights"]
    out = finetune.output_layer(model)
    assert out == {"classifier.3.weight", "classifier.3.bias"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in out else parent.weights[k]), k
    with pytest.raises(ConfigError, match="--freeze classifier: the output layer was re-initialized"):
        finetune.prepare(model, from_dict(TrainConfig, dict(init_from=str(path), freeze="classifier")), parent,
                         VOCAB, said.append)


def test_the_same_classes_take_every_weight_and_other_symbols_reinitialize_the_output_layer(tmp_path: Path):
    same = finetune.find_parent(str(save_parent(tmp_path / "same.pt")))
    model = SpeechModel.from_config(same.recognizer, len(VOCAB))
    said: list[str] = []
    assert not finetune.start_from(model, same, VOCAB, said.append) and said == []
    assert all(torch.equal(v, same.weights[k]) for k, v in model.state_dict().items())
    other = finetune.find_parent(str(save_parent(tmp_path / "other.pt", vocab=(*VOCAB[:-1], "ñ"))))
    assert finetune.start_from(model, other, VOCAB, said.append)
    assert "the parent's 29 output classes are other symbols than this run's" in said[0]
    wider = SpeechModel.from_config(RecognizerConfig(FeatureConfig(), ModelConfig(**{**SHAPE, "rnn_dim": 32})),
                                    len(VOCAB))
    with pytest.raises(ckpt.CheckpointError, match=r"its weights do not fit this model \(classifier.0.bias, "):
        finetune.start_from(wider, same, VOCAB, said.append)


# ---------------------------------------------------------------- bad references, one line before any data


@pytest.mark.slow  # a CLI process
@pytest.mark.parametrize("init_from, message", [
    ("missing.pt", "--init_from missing.pt: not a checkpoint, a model folder, a run id, or a runs:/ or models:/ URI"),
    (f"models:/{MODEL_NAME}/1", f"--init_from models:/{MODEL_NAME}/1: cannot load models:/{MODEL_NAME}/1 from "),
    (f"models:/{MODEL_NAME}@production", f"--init_from models:/{MODEL_NAME}@production: cannot load "),
])
def test_a_bad_init_from_is_one_line_before_any_data_is_read(init_from: str, message: str, short_dev: Path,
                                                              tmp_path: Path, isolated_mlflow: str):
    cfg = make_tiny_config(short_dev, init_from=init_from, output_dir=str(tmp_path / "out"))
    if init_from == "missing.pt":  # a real `asr` process; the others in this one (seconds of start-up saved)
        proc = subprocess.run(asr_command() + ["train", *tiny_args(cfg)], cwd=tmp_path,
                              env=subprocess_env(isolated_mlflow), capture_output=True, text=True, timeout=300)
    else:
        proc = run_cli_here(["train", *tiny_args(cfg)], cwd=tmp_path, tracking_uri=isolated_mlflow)
    assert (problem := one_line_error(proc)) is None, problem
    assert proc.stderr.startswith(f"Error: {message}"), proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()  # no data read, no run folder


def test_a_parent_checkpoint_that_would_run_code_is_refused_unopened(tmp_path: Path):
    from test_security import Payload

    marker, evil = tmp_path / "code-ran", tmp_path / "evil.pt"
    torch.save({"model": Payload(marker), "config": {}}, evil)
    with pytest.raises(ConfigError, match=f"^--init_from {evil} refused: it holds Python objects"):
        finetune.find_parent(str(evil))
    assert not marker.exists()


# ---------------------------------------------------------------- frozen blocks, through a resume


@pytest.mark.slow  # trains
def test_frozen_cnn_stays_bit_identical_through_an_interrupted_and_resumed_fine_tuning(
        short_dev: Path, tmp_path: Path, isolated_mlflow: str, monkeypatch: pytest.MonkeyPatch, capsys):
    """--freeze cnn from a checkpoint file: SIGTERM at step 3, then --resume: the CNN blocks end bit-identical to
    the parent's while the rest trained; the architecture came from the parent; the run, the registered version and
    its model card name the parent."""
    parent = save_parent(tmp_path / "parent.pt")
    out = tmp_path / "out"
    cfg = make_tiny_config(short_dev, init_from=str(parent), freeze="cnn", epoch=2, max_utterances=4, batch=1,
                           checkpoint_every=1, output_dir=str(out))
    stopped: list[str] = []

    def sigterm_at_step_3(name: str) -> None:
        if name == "step 3" and not stopped:
            stopped.append(name)
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(train_module, "kill_point", sigterm_at_step_3)
    given = {"init_from", "freeze", "epoch", "max_utterances", "batch", "checkpoint_every", "output_dir",
             "train_data", "dev_data", "test_data", "lm_order", "precision"}  # not the shape: the parent's is taken
    with pytest.raises(TrainingInterrupted):
        train(cfg, progress=False, given=given)
    run_dir = only_run_dir(out)
    assert torch.load(run_dir / ckpt.LAST, weights_only=True)["progress"]["step"] == 3
    first = capsys.readouterr().out
    assert f"init_from: {parent.resolve()} (checkpoint sha256 {sha256(parent)[:12]})" in first, first
    assert "cnn frozen" in first

    result = train(make_tiny_config(short_dev, resume=str(run_dir), output_dir=str(out)), progress=False,
                   given={"resume"})
    assert result.run_id == run_dir.name and f"resuming run {run_dir.name}" in capsys.readouterr().out
    before, after = ckpt.read_checkpoint(parent)["model"], ckpt.read_checkpoint(run_dir / ckpt.MODEL)["model"]
    frozen = [k for k in before if k.startswith("cnn.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    trained = [k for k in before if not k.startswith("cnn.")]
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))

    client = MlflowClient()
    run = client.get_run(run_dir.name)
    params = run.data.params
    assert (params["freeze"], params["init_from"], params["rnn_dim"], params["cnn_channels"]) == \
        ("cnn", str(parent), "24", "6")
    assert int(params["trainable_parameters"]) == int(params["parameters"]) - sum(v.numel() for k, v in
                                                                                   before.items() if k in frozen)
    lineage = {PARENT_TAG: str(parent.resolve()), PARENT_SHA256_TAG: sha256(parent)}
    assert {k: run.data.tags.get(k) for k in lineage} == lineage
    version = client.get_model_version(MODEL_NAME, result.promotion.version)
    assert {k: version.tags.get(k) for k in lineage} == lineage
    assert (f"- Lineage: fine-tuned from `{parent.resolve()}` (checkpoint sha256 `{sha256(parent)[:12]}`), frozen "
            "blocks: cnn") in version.description


# ---------------------------------------------------------------- acceptance: a registered model, a second split


# Enough capacity and steps to learn 4 utterances (the CER leaves 1.0 after ~20 epochs); no dropout or masks
FINE_TUNE = dict(max_utterances=4, batch=1, rnn_dim=64, learning_rate=0.01, dropout=0.0, freq_mask=0, time_mask=0,
                 threads=1)


@pytest.mark.slow  # trains twice, on real LibriSpeech
def test_fine_tuning_a_registered_model_on_a_second_split_lowers_its_cer_there(short_dev: Path, tmp_path: Path,
                                                                              isolated_mlflow: str):
    """Version 1 trains on the 4 shortest dev-clean utterances; `--init_from models:/NAME/1` fine-tunes it on the 4
    shortest test-clean ones. Version 2's tags name version 1, and scored on that second split, version 2's CER is
    below version 1's."""
    second = short_split(tmp_path / "second" / "test-clean", split_dir("test-clean"), 4)
    train(make_tiny_config(short_dev, epoch=3, output_dir=str(tmp_path / "out"), **FINE_TUNE), progress=False)
    uri = f"models:/{MODEL_NAME}/1"
    cfg = make_tiny_config(second, init_from=uri, epoch=40, output_dir=str(tmp_path / "out"), **FINE_TUNE)
    child = train(cfg, progress=False)
    assert child.promotion.version == "2"
    client = MlflowClient()
    assert client.get_model_version(MODEL_NAME, "2").tags[PARENT_TAG] == f"{MODEL_NAME}/1"
    assert client.get_run(child.run_id).data.tags[PARENT_TAG] == f"{MODEL_NAME}/1"
    # an alias is pinned to its version, a run's model named by its URI; the sha256 is of the very checkpoint
    by_alias, by_run = finetune.find_parent(f"models:/{MODEL_NAME}@production"), finetune.find_parent(child.run_id)
    assert by_alias.name == f"{MODEL_NAME}/1" and by_run.name == f"runs:/{child.run_id}/model"
    assert client.get_model_version(MODEL_NAME, "2").tags[PARENT_SHA256_TAG] == by_alias.sha256
    utterances = utterances_of([str(second)])
    before, after = (score_split(asr.load(f"models:/{MODEL_NAME}/{v}"), utterances).cer for v in ("1", "2"))
    print(f"CER on {second.name} (4 utterances): version 1 {before:.3f}, fine-tuned version 2 {after:.3f}")
    assert after < before
    assert child.dev["cer"] == pytest.approx(after, abs=1e-6)  # the run's dev CER is that same score


def test_the_two_stage_recipe_fine_tunes_stage_ones_registered_model_with_noise():
    """recipes/two-stage-*.json: stage 2 starts from the model stage 1 registers and promotes, on another split,
    with noise augmentation, and leaves the features and shape to the parent."""
    one, two = (load_settings(TrainConfig, REPO / "recipes" / f"two-stage-{n}.json") for n in ("1-clean", "2-noisy"))
    first, second = from_dict(TrainConfig, one), from_dict(TrainConfig, two)
    assert first.tracking.promote == "always" and not first.finetune.init_from
    assert second.finetune.init_from == f"models:/{first.tracking.registered_model}@production"
    assert second.tracking.registered_model != first.tracking.registered_model
    assert (first.data.train_data, second.data.train_data) == (("data/demo/train",),
                                                                ("../shared/data/LibriSpeech/train-clean-5",))
    assert second.augment.noise_snr_db > 0
    assert not set(to_dict(RecognizerConfig())) & set(two)
