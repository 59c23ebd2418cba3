"""A model trained with an LM carries its decoder: the LM, decoder.json with the settings tuned on dev, both as
model artifacts and in the run's output folder; the pyfunc, `asr transcribe`, `asr validate` and `asr evaluate`
decode with it unless told otherwise; the run logs dev and test WER/CER of greedy decoding and of that decoder,
and the registry compares versions by the latter. Settings that cannot work are refused before any data is read."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import (
    FILE_ID,
    MODEL_NAME,
    TRANSCRIPT,
    asr_command,
    mlflow_store,
    one_line_error,
    run_cli,
    run_cli_alongside,
    run_cli_here,
    served_model,
    split_dir,
    tiny_args,
    torch_threads,
)
from mlflow import MlflowClient

from asr.audio import load_audio
from asr.config import ConfigError, DecodeConfig
from asr.data.dataset import read_splits
from asr.decoding import DECODER_FILE, DecoderError, read_model_decoder, with_overrides
from asr.lm import arpa_words, build_arpa
from asr.metrics import cer, wer
from asr.pyfunc import audio_to_base64
from asr.settings import DecoderSection
from asr.transcribe import Transcriber

URI = f"models:/{MODEL_NAME}@production"


def flac() -> Path:
    return split_dir("test-clean") / "1089/134686/1089-134686-0000.flac"


def run_dir(trained) -> Path:
    return Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id


def expected_texts(trained) -> tuple[str, str]:
    """(the model's decoder's text, greedy text) of the test file, decoded here from the run's own files with the
    settings decoder.json holds, one thread (as the subprocesses below run)."""
    folder = run_dir(trained)
    own = read_model_decoder(folder / DECODER_FILE)
    wave = load_audio(flac())
    with torch_threads(1):
        lm_text = Transcriber.from_checkpoint(folder / "model.pt", own).transcribe([wave])[0]
        greedy = Transcriber.from_checkpoint(folder / "model.pt").transcribe([wave])[0]
    assert lm_text != greedy, "the test needs a file on which the LM changes the transcript"
    assert set(lm_text.split()) <= set(arpa_words(folder / "lm.arpa"))  # words of the LM, not letter soup
    return lm_text, greedy


# ---------------------------------------------------------------- settings that cannot work, refused up front

def test_decoder_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="--lm_order 1: .*unigram"):
        DecoderSection(lm_order=1)
    with pytest.raises(ConfigError, match="--lm_order 0"):
        DecoderSection(lm="lm.arpa", lm_order=0)
    with pytest.raises(ConfigError, match="--lexicon .* needs an LM"):
        DecoderSection(lexicon="lexicon.txt", lm_order=0)
    with pytest.raises(ConfigError, match="--word_scores is empty"):
        DecoderSection(word_scores="")
    assert DecoderSection().attached and not DecoderSection(lm_order=0).attached


@pytest.mark.slow  # subprocesses
def test_train_refuses_an_lm_that_cannot_work_before_reading_data(tiny_config, tmp_path):
    """--lm_order 1, a unigram LM and a lexicon the LM does not know: one line, exit 1, and no store, run or
    output folder made (nothing read or computed)."""
    unigram = tmp_path / "unigram.arpa"
    build_arpa(["a cat sat"], 1, unigram)
    bigram = tmp_path / "bigram.arpa"
    build_arpa(["a cat sat"], 2, bigram)
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("DOG\td o g |\n")
    args = ["train"] + tiny_args(tiny_config(output_dir=str(tmp_path / "outputs"), lm_order=3))
    cases = {"--lm_order 1": (["--lm_order", "1"], "--lm_order 1: the beam search decoder's KenLM"),
             "unigram LM": (["--lm", str(unigram)], "unigram (order 1) LM"),
             "lexicon": (["--lm", str(bigram), "--lexicon", str(lexicon)], "none of its 1 words is in --lm")}
    for i, (name, (extra, message)) in enumerate(cases.items()):
        uri = f"sqlite:///{tmp_path}/mlflow.db"  # the first as a real `asr` process, the others in this one
        proc = (run_cli(asr_command() + args + extra, cwd=tmp_path, tracking_uri=uri) if i == 0
                else run_cli_here(args + extra, cwd=tmp_path, tracking_uri=uri))
        assert one_line_error(proc) is None, f"{name}: {one_line_error(proc)}"
        assert message in proc.stderr, (name, proc.stderr)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- what the run and the registry hold

def test_the_trained_model_carries_its_tuned_decoder(trained_lm):
    folder, run_id = run_dir(trained_lm), trained_lm.result.run_id
    saved = json.loads((folder / DECODER_FILE).read_text())
    assert saved["decoder"] == "beam" and saved["lm"] == "lm.arpa" and saved["lexicon"] == ""
    assert saved["lm_order"] == 3 and saved["description"] == "beam+lm(order 3)"
    assert (saved["lm_weight"], saved["word_score"]) in {(w, s) for w in (0.5, 2.0) for s in (0.0, 1.0)}
    assert arpa_words(folder / "lm.arpa")  # built from the training transcripts

    with _client(trained_lm) as client:
        run = client.get_run(run_id)
        # the tuned settings are run params; the grid, a table
        assert float(run.data.params["lm_weight"]) == saved["lm_weight"]
        assert float(run.data.params["word_score"]) == saved["word_score"]
        assert run.data.params["lm_order"] == "3" and run.data.params["lm_weights"] == "0.5,2.0"
        assert run.data.tags["decoder"] == "beam+lm(order 3)"
        # dev and test, greedy and the model's decoder
        metrics = run.data.metrics
        decoding = trained_lm.result.decoding
        for split, scores in (("dev", decoding.dev), ("test", decoding.test)):
            for key in ("wer", "cer", "wer_greedy", "cer_greedy"):
                assert metrics[f"{split}_{key}"] == pytest.approx(scores[key]), (split, key)
        grid = client.load_table(run.info.experiment_id, "lm_grid.json", run_ids=[run_id])
        assert len(grid) == 4 and min(grid["wer"]) == pytest.approx(metrics["dev_wer"])
        # the model's artifacts: checkpoint, decoder.json and LM
        logged = mlflow.get_logged_model(run.outputs.model_outputs[0].model_id)
        files = mlflow.artifacts.list_artifacts(artifact_uri=f"{logged.artifact_location}/artifacts")
        assert sorted(Path(a.path).name for a in files) == ["decoder.json", "lm.arpa", "model.pt"]
        # the version: compared by the dev WER of what it serves, and says how it decodes
        version = client.get_model_version(MODEL_NAME, "1")
        assert float(version.tags["val_wer"]) == pytest.approx(metrics["dev_wer"], abs=1e-6)
        assert version.tags["decoder"] == "beam+lm(order 3)"
    assert "beam+lm(order 3) WER" in trained_lm.stdout and "greedy WER" in trained_lm.stdout


def test_the_predictions_tables_show_what_the_model_serves(trained_lm):
    """predictions_dev.json and predictions_test.json: per utterance, the text of the decoder the model serves
    (`prediction`) and of greedy decoding (`prediction_greedy`), the very texts the run's dev_/test_ WER and CER
    score: recomputed from the tables, they are those metrics."""
    run_id = trained_lm.result.run_id
    with _client(trained_lm) as client:
        run = client.get_run(run_id)
        metrics = run.data.metrics
        for split, dataset in (("dev", trained_lm.cfg.data.dev_data), ("test", trained_lm.cfg.data.test_data)):
            table = client.load_table(run.info.experiment_id, f"predictions_{split}.json", run_ids=[run_id])
            assert list(table.columns) == ["file_id", "target", "prediction", "prediction_greedy"]
            assert sorted(table["file_id"]) == list(table["file_id"]) == sorted(u.file_id for u in
                                                                               read_splits(dataset))
            target, served, greedy = (table[k].tolist() for k in ("target", "prediction", "prediction_greedy"))
            assert wer(target, served) == pytest.approx(metrics[f"{split}_wer"], abs=1e-6), split
            assert cer(target, served) == pytest.approx(metrics[f"{split}_cer"], abs=1e-6), split
            assert wer(target, greedy) == pytest.approx(metrics[f"{split}_wer_greedy"], abs=1e-6), split
            assert cer(target, greedy) == pytest.approx(metrics[f"{split}_cer_greedy"], abs=1e-6), split
            # the LM changes some transcripts, so the two columns tell the decoders apart
            assert served != greedy, split


@contextmanager
def _client(trained) -> Iterator[MlflowClient]:
    """A client of the trained store, which is also the store of mlflow's module functions meanwhile."""
    with mlflow_store(trained.root):
        yield MlflowClient()


# ---------------------------------------------------------------- every way in decodes with the model's decoder

def test_the_pyfunc_decodes_with_the_models_lm_built_once(trained_lm):
    """No params: the model's LM; decoder=greedy: greedy; the model's decoder is built once, at load, and a
    decoder for other settings once, sharing the loaded LM; concurrent requests decode as they would alone."""
    lm_text, greedy = expected_texts(trained_lm)
    with _client(trained_lm), torch_threads(1):
        model = mlflow.pyfunc.load_model(URI)
        transcriber = model.unwrap_python_model().transcriber
        built = transcriber.decoder
        request = pd.DataFrame({"audio": [audio_to_base64(flac())]})  # paths are off unless a server allows them
        assert model.predict(request)["text"].tolist() == [lm_text]
        assert model.predict(request, params={"decoder": "greedy"})["text"].tolist() == [greedy]
        assert model.predict(request)["text"].tolist() == [lm_text]
        assert transcriber.decoder is built  # the model's own decoder: built at load, once
        # another LM weight: a decoder of its own, kept for the next request, sharing the LM already loaded
        reweighted = model.predict(request, params={"lm_weight": 0.0})["text"].tolist()
        other = transcriber.decoder_for(with_overrides(transcriber.decode_cfg, {"lm_weight": 0.0}))
        assert model.predict(request, params={"lm_weight": 0.0})["text"].tolist() == reweighted
        assert transcriber.decoder_for(with_overrides(transcriber.decode_cfg, {"lm_weight": 0.0})) is other
        assert other is not built and other.loaded is built.loaded and built.loaded.lm is not None
        assert transcriber.decoder is built
        # requests at once (MLflow's scoring server predicts in threads) get what each gets alone
        asked = [None, {"decoder": "greedy"}, None, {"lm_weight": 0.0}] * 3
        with ThreadPoolExecutor(max_workers=4) as pool:
            texts = list(pool.map(lambda params: model.predict(request, params=params)["text"][0], asked))
        assert texts == [lm_text, greedy, lm_text, reweighted[0]] * 3


@pytest.mark.slow  # subprocesses
def test_the_commands_decode_with_the_models_lm_unless_told(trained_lm, tmp_path):
    lm_text, greedy = expected_texts(trained_lm)
    root, uri = trained_lm.root, trained_lm.uri

    def out(proc: subprocess.CompletedProcess) -> list[str]:
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.splitlines()

    def here(args: tuple[str, ...]) -> list[str]:
        with torch_threads(1):
            return out(run_cli_here(list(args), cwd=root, tracking_uri=uri))

    folder, test_clean = str(run_dir(trained_lm)), str(split_dir("test-clean"))
    commands = [
        ("transcribe", "--model-uri", folder, str(flac())),  # the output folder: decoder.json
        ("transcribe", "--model-uri", URI, str(flac())),
        ("transcribe", "--model-uri", URI, "--decoder", "greedy", str(flac())),
        ("validate", "--file_id", FILE_ID, "--dataset", test_clean),
        ("evaluate", "--dataset", test_clean),
        ("evaluate", "--dataset", test_clean, "--decoder", "greedy"),
    ]
    # the first as a real `asr` process, alongside the others in this process (seconds of start-up and imports
    # each saved); the evaluations one after the other, so their runs are in order
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = run_cli_alongside(pool, asr_command() + list(commands[0]), root, uri, threads=1)
        rest = [here(args) for args in commands[1:]]
        outputs = [out(first.result()), *rest]
    by_folder, by_uri, forced_greedy, lines, own, forced = outputs
    assert by_folder == [lm_text] and by_uri == [lm_text]  # the output folder (its decoder.json), the registry
    assert forced_greedy == [greedy]
    assert f"target:    {TRANSCRIPT.lower()}" in lines and f"predicted: {lm_text}" in lines
    assert own[-1].startswith("WER ") and forced[-1].startswith("WER ")
    with _client(trained_lm) as client:
        exp = client.get_experiment_by_name("SpeechRecognition")
        runs = client.search_runs([exp.experiment_id], "tags.task = 'evaluate'", order_by=["attributes.start_time"])
        params = [r.data.params for r in runs]
        saved = json.loads((run_dir(trained_lm) / DECODER_FILE).read_text())
        assert [p["decoder_description"] for p in params] == ["beam+lm", "greedy"]
        assert float(params[0]["lm_weight"]) == saved["lm_weight"] and params[0]["decoder"] == "beam"
        # what evaluate reports is what the run logged for the model's decoder on the same split
        metrics = client.get_run(trained_lm.result.run_id).data.metrics
        assert runs[0].data.metrics["cer"] == pytest.approx(metrics["test_cer"], abs=0.02)
        assert runs[1].data.metrics["cer"] == pytest.approx(metrics["test_cer_greedy"], abs=0.02)


@pytest.mark.slow  # subprocesses
def test_lm_tune_without_lm_tunes_the_models_own(trained_lm):
    """`asr lm tune` without --lm: the registered model's own LM with its own decoder settings, named in the output
    and the run's params; on the split and grid training tuned on, it finds training's grid again. A model without
    an LM: one line saying to pass --lm."""
    root, uri = trained_lm.root, trained_lm.uri
    weights, scores = trained_lm.cfg.decoder.lm_weights, trained_lm.cfg.decoder.word_scores
    grid = ["--lm_weights", ",".join(map(str, weights)), "--word_scores", ",".join(map(str, scores))]
    dev = ",".join(trained_lm.cfg.data.dev_data)
    proc = run_cli(asr_command() + ["lm", "tune", "--dataset", dev, *grid], cwd=root, tracking_uri=uri)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (named,) = [line for line in proc.stdout.splitlines() if line.startswith("tuning ")]
    assert named.startswith(f"tuning the LM of {URI}: ") and named.endswith("/lm.arpa (lexicon: the LM's words)")
    with _client(trained_lm) as client:
        experiment = client.get_experiment_by_name("SpeechRecognition").experiment_id
        run = client.search_runs([experiment], "tags.task = 'lm-tune'", order_by=["attributes.start_time DESC"])[0]
        assert run.data.params["lm_source"] == "model" and Path(run.data.params["lm"]).name == "lm.arpa"
        assert named.endswith(f"{run.data.params['lm']} (lexicon: the LM's words)")
        tuned = client.load_table(experiment, "lm_grid.json", run_ids=[run.info.run_id])
        trained = client.load_table(experiment, "lm_grid.json", run_ids=[trained_lm.result.run_id])
    assert tuned[["lm_weight", "word_score"]].values.tolist() == trained[["lm_weight", "word_score"]].values.tolist()
    assert tuned["wer"].tolist() == pytest.approx(trained["wer"].tolist(), abs=1e-6)

    greedy_only = str(run_dir(trained_lm) / "best.pt")  # a checkpoint without the run's decoder: greedy
    proc = run_cli_here(["lm", "tune", "--model_uri", greedy_only, "--dataset", dev, *grid], cwd=root,
                        tracking_uri=uri)  # in this process: `asr lm tune` ran as one just above
    assert one_line_error(proc) is None, proc.stderr
    assert f"no LM to tune: {greedy_only} carries none" in proc.stderr and "pass --lm" in proc.stderr


@pytest.mark.slow  # a training
def test_a_given_lm_and_lexicon_travel_with_the_model(tiny_config, isolated_mlflow, short_dev, tmp_path):
    """--lm FILE --lexicon FILE: both are placed in the run's folder and logged with the model (as lm.arpa and
    lexicon.txt), byte for byte, and the loaded model decodes with them; the given files stay as they were."""
    from asr.evaluation.evaluate import utterances_of
    from asr.lm import write_lexicon
    from asr.text import normalized
    from asr.training.train import train

    given = tmp_path / "given"
    given.mkdir()
    arpa, lexicon = given / "words.arpa", given / "words.lex"
    build_arpa((normalized(u.transcript) for u in utterances_of([str(short_dev)])), 2, arpa)
    write_lexicon(arpa_words(arpa), lexicon)
    before = {p: (p.read_bytes(), p.stat().st_mode) for p in (arpa, lexicon)}
    result = train(tiny_config(lm=str(arpa), lexicon=str(lexicon), lm_order=3, lm_weights="1", word_scores="0",
                               output_dir=str(tmp_path / "outputs")), progress=False)
    folder = tmp_path / "outputs" / result.run_id
    saved = json.loads((folder / DECODER_FILE).read_text())
    assert (saved["lm"], saved["lexicon"], saved["lm_order"], saved["description"]) == \
        ("lm.arpa", "lexicon.txt", None, "beam+lm")
    assert (saved["lm_weight"], saved["word_score"]) == (1.0, 0.0)
    assert (folder / "lm.arpa").read_bytes() == before[arpa][0]
    assert (folder / "lexicon.txt").read_bytes() == before[lexicon][0]
    assert {p: (p.read_bytes(), p.stat().st_mode) for p in (arpa, lexicon)} == before

    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    own = model.unwrap_python_model().transcriber.decode_cfg
    assert Path(own.lm).name == "lm.arpa" and Path(own.lm).read_bytes() == before[arpa][0]
    assert Path(own.lexicon).name == "lexicon.txt" and Path(own.lexicon).read_bytes() == before[lexicon][0]
    assert not Path(own.lm).is_relative_to(folder)  # the model's own copy, not the training folder's
    assert (own.decoder, own.lm_weight, own.word_score) == ("beam", 1.0, 0.0)
    assert MlflowClient().get_run(result.run_id).data.tags["decoder"] == "beam+lm"


@pytest.mark.slow  # two trainings in subprocesses
def test_a_run_killed_after_logging_its_model_resumes_to_the_same_decoder(tiny_config, isolated_mlflow, tmp_path):
    """kill -9 after the model (with its decoder) is logged, before it is registered: --resume tunes again, to the
    same settings (the params logged before the kill stay, none is refused as changed), and registers one version
    whose decoder is the one in decoder.json."""
    import signal

    from conftest import only_run_dir, subprocess_env

    out = tmp_path / "outputs"
    args = asr_command() + ["train"] + tiny_args(tiny_config(output_dir=str(out), lm_order=2, lm_weights="0.5,2",
                                                             word_scores="0,1"))
    env = subprocess_env(isolated_mlflow)
    killed = subprocess.run(args, cwd=tmp_path, env=env | {"ASR_KILL_AT": "logged"}, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = only_run_dir(out)
    first = json.loads((folder / DECODER_FILE).read_text())
    resumed = subprocess.run(asr_command() + ["train", "--resume", str(folder)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "version 1 promoted to Production" in resumed.stdout
    assert json.loads((folder / DECODER_FILE).read_text()) == first
    client = MlflowClient()
    (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert version.tags["decoder"] == "beam+lm(order 2)" and version.run_id == folder.name
    params = client.get_run(folder.name).data.params
    assert (float(params["lm_weight"]), float(params["word_score"])) == (first["lm_weight"], first["word_score"])
    # the tables logged before the kill are not logged again (MLflow would append: every row twice)
    grid = mlflow.artifacts.load_dict(f"runs:/{folder.name}/lm_grid.json")
    assert len(grid["data"]) == 4, grid
    table = mlflow.artifacts.load_dict(f"runs:/{folder.name}/predictions_dev.json")
    ids = [row[table["columns"].index("file_id")] for row in table["data"]]
    assert ids and len(ids) == len(set(ids)), ids


@pytest.mark.slow  # mlflow models serve
def test_the_served_model_decodes_with_its_lm_over_http(trained_lm, tmp_path):
    """No request params: the model's own decoder (the LM transcript); {"decoder": "greedy"}: the greedy one."""
    from test_serving import post

    lm_text, greedy = expected_texts(trained_lm)
    audio = audio_to_base64(flac())
    with served_model(trained_lm, URI, tmp_path / "server.log") as port:
        status, body = post(port, {"dataframe_records": [{"audio": audio}]})
        assert status == 200 and [p["text"] for p in body["predictions"]] == [lm_text], body
        status, body = post(port, {"dataframe_records": [{"audio": audio}], "params": {"decoder": "greedy"}})
        assert status == 200 and [p["text"] for p in body["predictions"]] == [greedy], body
        status, body = post(port, {"inputs": [audio]})
        assert status == 200 and [p["text"] for p in body["predictions"]] == [lm_text], body


def test_a_model_without_a_decoder_decodes_greedily(trained):
    """lm_order 0: no decoder.json, greedy everywhere, the run's decoder metrics equal the greedy ones."""
    folder = Path(trained.cfg.checkpoint.output_dir) / trained.result.run_id
    assert not (folder / DECODER_FILE).exists() and not (folder / "lm.arpa").exists()
    decoding = trained.result.decoding
    assert decoding.description == "greedy" and decoding.files == {}
    assert decoding.dev["wer"] == decoding.dev["wer_greedy"] and decoding.test["cer"] == decoding.test["cer_greedy"]
    assert trained.versions["1"][2]["decoder"] == "greedy"


def test_overrides_on_top_of_the_models_decoder():
    own = DecodeConfig(decoder="beam", lm="lm.arpa", lexicon="lex.txt", lm_weight=0.7, word_score=1.0)
    assert with_overrides(own, {"decoder": "greedy"}) == DecodeConfig(decoder="greedy", lm_weight=0.7,
                                                                     word_score=1.0)
    assert with_overrides(own, {"lm_weight": 2.0}) == DecodeConfig(decoder="beam", lm="lm.arpa", lexicon="lex.txt",
                                                                  lm_weight=2.0, word_score=1.0)
    assert with_overrides(own, {"lm": "other.arpa"}).lexicon == ""  # the model's lexicon spells the model's LM
    with pytest.raises(ConfigError, match="not among greedy"):
        with_overrides(own, {"decoder": "nope"})


def test_overrides_refuse_greedy_with_an_lm_or_lexicon():
    own = DecodeConfig(decoder="beam", lm="lm.arpa", lexicon="lex.txt")
    with pytest.raises(DecoderError, match=r"^--decoder greedy contradicts --lm other.arpa \(") as e:
        with_overrides(own, {"decoder": "greedy", "lm": "other.arpa"})
    assert "\n" not in str(e.value)
    with pytest.raises(DecoderError, match="contradicts --lm a.arpa and --lexicon b.txt"):
        with_overrides(DecodeConfig(), {"decoder": "greedy", "lm": "a.arpa", "lexicon": "b.txt"})
    # greedy with the LM and lexicon given empty says the same as greedy alone: no LM, no lexicon
    assert with_overrides(own, {"decoder": "greedy", "lm": ""}) == DecodeConfig(decoder="greedy")
    assert with_overrides(own, {"lm": "other.arpa"}).lm == "other.arpa"  # an LM alone implies beam search


def test_greedy_with_an_lm_on_the_command_line_is_refused_before_anything_is_read(tmp_path):
    arpa = tmp_path / "lm.arpa"
    arpa.write_text("not read\n")
    dataset = str(split_dir("dev-clean"))
    for args in (["evaluate", "--dataset", dataset], ["lm", "tune", "--dataset", dataset]):
        proc = run_cli_here([*args, "--decoder", "greedy", "--lm", str(arpa)], cwd=tmp_path)
        assert one_line_error(proc) is None, args
        assert f"--decoder greedy contradicts --lm {arpa}" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no store, no run: refused before the model was looked for
