"""The dataclasses in asr/settings.py (declared with asr/config.py) are the single source of every option: the
`asr` CLI, main.py and the MLproject must all mirror them, and the MLproject on disk must be the one they
generate."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import subprocess
import sys

import click
import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, asr_command, one_line_error, run_cli, run_cli_here, subprocess_env

from asr import config, settings
from asr.cli import main as asr_cli
from asr.config import from_dict
from asr.settings import ServerConfig, TrainConfig, TuneConfig, ValidateConfig, render_mlproject

MLPROJECT = REPO / "MLproject"
ENTRY_POINTS = {"server": ServerConfig, "train": TrainConfig, "validate": ValidateConfig}


def names(cls) -> list[str]:
    return [f.name for f in config.fields(cls)]


def load_main_py():
    spec = importlib.util.spec_from_file_location("asr_main_py", REPO / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_options(args: list[str]) -> tuple[set[str], str]:
    """Runs `... --help` for real and returns the option names it lists (every spelling) and the text."""
    proc = subprocess.run(args + ["--help"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = set()
    for line in proc.stdout.splitlines():
        if m := re.match(r"^  (--?[a-zA-Z][\w-]*(?:, --?[a-zA-Z][\w-]*)*)", line):
            listed.update(m.group(1).split(", "))
    return listed, proc.stdout


# ---------------------------------------------------------------- MLproject is generated, never stale

def test_mlproject_on_disk_is_the_generated_one():
    assert MLPROJECT.read_text() == render_mlproject(), \
        "MLproject is stale: regenerate it with `make mlproject` (python -m asr.settings > MLproject)"


def test_python_m_asr_settings_prints_the_mlproject():
    proc = subprocess.run([sys.executable, "-m", "asr.settings"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render_mlproject()


def test_mlproject_entry_points_mirror_the_dataclasses():
    spec = yaml.safe_load(MLPROJECT.read_text())
    assert spec["name"] == "speech-recognition"
    assert spec["conda_env"] == "conda.yaml" and (REPO / "conda.yaml").is_file()
    assert set(spec["entry_points"]) == set(ENTRY_POINTS)
    for entry, cls in ENTRY_POINTS.items():
        ep = spec["entry_points"][entry]
        params = ep["parameters"]
        declared = [f.name for f in settings.mlproject_fields(cls)]
        assert list(params) == declared, entry
        for f in settings.mlproject_fields(cls):
            p = params[f.name]
            if f.type in ("int", "float"):
                assert p["type"] == "float", (entry, f.name)
                assert float(p["default"]) == f.default, (entry, f.name)
            else:
                assert p["type"] == "string", (entry, f.name)
                assert p["default"] == config.cli_value(f.default), (entry, f.name)
        # every parameter is passed once, as --name {name}
        tokens = shlex.split(ep["command"])
        flags = {tokens[i]: tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i].startswith("--")}
        for name in declared:
            assert flags.get(f"--{name}") == f"{{{name}}}", (entry, name)
            assert ep["command"].count(f"{{{name}}}") == 1, (entry, name)
    assert spec["entry_points"]["train"]["command"].startswith("python main.py --train True ")
    assert spec["entry_points"]["validate"]["command"].startswith("python main.py --train False ")
    assert spec["entry_points"]["server"]["command"].startswith("python -m asr server ")


@pytest.mark.parametrize("entry, cls", [("train", TrainConfig), ("validate", ValidateConfig)])
def test_mlproject_default_command_parses_back_to_the_default_config(entry, cls):
    """What `mlflow run -e ENTRY .` executes with no -P (MLflow's own rendering, shell quoting included)
    is accepted by main.py and yields the dataclass defaults."""
    from mlflow.projects import _project_spec

    command = _project_spec.load_project(str(REPO)).get_entry_point(entry).compute_command({}, None)
    argv = shlex.split(command)
    assert argv[:2] == ["python", "main.py"]
    main_py = load_main_py()
    ctx = main_py.main.make_context("main.py", argv[2:])
    assert ctx.params["train"] is (entry == "train")
    assert from_dict(cls, ctx.params) == cls()


def test_a_setting_that_needs_another_is_neither_declared_nor_logged_without_it():
    """--lookahead means something to --streaming models only: a bidirectional run (the default) does not log it,
    neither through its own params nor through `mlflow run` (which logs every declared parameter, so the MLproject
    does not declare it); -P lookahead=N still reaches a streaming run's command, as MLflow appends it."""
    from mlflow.projects import _project_spec

    assert "lookahead" not in config.to_params(TrainConfig())
    streaming = from_dict(TrainConfig, {"streaming": True, "lookahead": 0})
    assert config.to_params(streaming)["lookahead"] == 0 and config.to_params(streaming)["streaming"] is True
    train = _project_spec.load_project(str(REPO)).get_entry_point("train")
    logged, extra = train.compute_parameters({}, None)  # what `mlflow run -e train .` logs
    assert "lookahead" not in {**logged, **extra} and logged["streaming"] == "False"
    logged, extra = train.compute_parameters({"streaming": "true", "lookahead": "3"}, None)
    assert extra == {"lookahead": "3"}
    argv = shlex.split(train.compute_command({"streaming": "true", "lookahead": "3"}, None))
    ctx = load_main_py().main.make_context("main.py", argv[2:])
    assert from_dict(TrainConfig, ctx.params).model.lookahead == 3


# ---------------------------------------------------------------- the CLIs offer every field

@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("validate", ValidateConfig),
                                          ("server", ServerConfig)])
def test_asr_help_lists_every_field(command, cls):
    listed, text = help_options(asr_command() + [command])
    for f in config.fields(cls):
        assert f"--{f.name}" in listed, f"`asr {command} --help` lacks --{f.name}"
        if "_" in f.name:
            assert f"--{f.name.replace('_', '-')}" in listed
    # and nothing else but --help (and train's settings file)
    expected = {f"--{n}" for n in names(cls)} | {f"--{n.replace('_', '-')}" for n in names(cls)}
    assert listed - expected == {"-h", "--help"} | ({"--config"} if command == "train" else set())
    assert text.count("[default:") == len(names(cls))  # every option shows its default


def test_main_py_help_lists_every_field():
    listed, _ = help_options([sys.executable, str(REPO / "main.py")])
    for cls in (TrainConfig, ValidateConfig):
        for name in names(cls):
            assert f"--{name}" in listed, f"main.py --help lacks --{name}"
    assert "--train" in listed


COMMANDS = {("train",): TrainConfig, ("validate",): ValidateConfig, ("server",): ServerConfig,
            ("transcribe",): settings.TranscribeConfig, ("evaluate",): settings.EvaluateConfig,
            ("serve-stream",): settings.StreamServerConfig,
            ("lm", "build"): settings.LMBuildConfig, ("lm", "tune"): TuneConfig, ("export",): settings.ExportConfig,
            ("promote",): settings.PromoteConfig,
            ("data", "synth"): settings.SynthConfig, ("data", "download"): settings.DownloadConfig,
            ("data", "features"): settings.FeaturesConfig,
            ("bench", "train"): settings.BenchTrainConfig, ("bench", "infer"): settings.BenchInferConfig,
            ("bench", "lm"): settings.BenchLMConfig, ("bench", "data"): settings.BenchDataConfig,
            ("bench", "stream"): settings.BenchStreamConfig}


def test_every_command_takes_its_options_from_a_settings_class():
    commands = {(name,) for name, c in asr_cli.commands.items() if not isinstance(c, click.Group)}
    commands |= {(name, sub) for name, c in asr_cli.commands.items() if isinstance(c, click.Group)
                 for sub in c.commands}
    assert commands == set(COMMANDS)


@pytest.mark.parametrize("command, cls", list(COMMANDS.items()),
                         ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_asr_options_have_the_dataclass_defaults_types_and_choices(command, cls):
    cmd = asr_cli
    for name in command:
        cmd = cmd.commands[name]
    params = {p.name: p for p in cmd.params if isinstance(p, click.Option) and p.name not in ("help", "config_file")}
    assert list(params) == names(cls)
    for f in config.fields(cls):
        p = params[f.name]
        if f.metadata.get("required"):
            assert p.required, f.name
            with pytest.raises(click.MissingParameter, match=f.name):
                cmd.make_context(command[-1], [])
        else:
            assert p.default == config.cli_value(f.default), f.name
        if f.metadata.get("flag"):
            assert p.is_flag, f.name
        elif f.metadata.get("choices") and f.type in ("str",):
            assert isinstance(p.type, click.Choice) and tuple(p.type.choices) == f.metadata["choices"]
        else:
            kind = {"int": "integer", "float": "float", "bool": "boolean"}.get(f.type, "text")
            assert p.type.name == kind, f.name
        assert p.help == f.metadata["help"]


DECODING_COMMANDS = [("transcribe",), ("evaluate",), ("serve-stream",), ("lm", "tune")]


@pytest.mark.parametrize("command", DECODING_COMMANDS, ids=" ".join)
def test_decoder_options_show_the_models_own_decoder_as_their_default(command):
    """A decoder setting left out keeps the model's own (asr.decoding.with_overrides): --help says that, not the
    value the config holds, which stays the option's default (the model's own decoder, not greedy, is what runs)."""
    from asr.decoding import DECODER_SETTINGS

    cmd = asr_cli
    for name in command:
        cmd = cmd.commands[name]
    shown = {f.name: f.metadata["shown"] for f in config.fields(config.DecodeConfig) if f.metadata["shown"]}
    assert set(shown) == set(DECODER_SETTINGS)
    ctx = click.Context(cmd)
    records = {p.name: p.get_help_record(ctx)[1] for p in cmd.params if isinstance(p, click.Option)}
    for name, says in shown.items():
        if name not in records:  # one the command does not use (lm tune: the grid replaces lm_weight, word_score)
            assert command == ("lm", "tune") and name in TuneConfig.unused, name
            continue
        assert says.startswith("the model's own") and records[name].endswith(f"[default: ({says})]"), name
        assert cmd.params[[p.name for p in cmd.params].index(name)].default == getattr(config.DecodeConfig, name)
    assert records["precision"].endswith("[default: fp32]")  # a setting that is its value when left out
    text = " ".join(CliRunner().invoke(asr_cli, [*command, "--help"]).output.split())
    assert "[default: (the model's own, else greedy)]" in text and "[default: greedy]" not in text
    assert "[default: 50]" not in text and "[default: 1.5]" not in text


def test_serve_stream_offers_only_the_options_a_stream_uses():
    """--chunk_seconds cuts whole files: a stream comes in its client's messages, so serve-stream does not take it
    (click's usage error, exit 2) but does take every decoder setting and the precision."""
    params = {p.name for p in asr_cli.commands["serve-stream"].params}
    assert {f.name for f in config.fields(config.DecodeConfig)} - {"chunk_seconds"} <= params
    assert "chunk_seconds" not in params and "chunk_seconds" in {f.name for f in config.fields(config.DecodeConfig)}
    result = CliRunner().invoke(asr_cli, ["serve-stream", "--chunk_seconds", "5"])
    assert result.exit_code == 2 and "No such option '--chunk_seconds'" in result.output


def test_lm_tune_offers_only_the_options_it_uses():
    """The grid replaces --lm_weight and --word_score, and tune keeps no worst-errors table: tune does not offer
    them (click's usage error, exit 2), logs no such params, and evaluate still takes all three."""
    tune = {p.name for p in asr_cli.commands["lm"].commands["tune"].params}
    unused = {"lm_weight", "word_score", "worst"}
    assert not unused & tune and {"lm_weights", "word_scores", "lm", "decoder", "dataset"} <= tune
    assert unused <= {p.name for p in asr_cli.commands["evaluate"].params}
    assert not unused & set(config.to_params(TuneConfig()))
    assert unused <= set(config.to_params(settings.EvaluateConfig()))
    result = CliRunner().invoke(asr_cli, ["lm", "tune", "--worst", "5"])
    assert result.exit_code == 2 and "No such option '--worst'" in result.output
    with pytest.raises(config.ConfigError, match="unknown setting"):
        from_dict(TuneConfig, {"lm_weight": 2.0}, strict=True)


def test_a_setting_several_commands_share_has_one_rule():
    """--endpoint_ms had minimum 1 in transcribe and 10 in serve-stream: one setting, one range everywhere."""
    rules = {cls.__name__: (f.default, f.metadata["min"]) for cls in set(COMMANDS.values())
             for f in config.fields(cls) if f.name == "endpoint_ms"}
    assert len(rules) == 3 and set(rules.values()) == {(800.0, settings.ENDPOINT_MIN_MS)}, rules
    for command in (["transcribe", "--stream", "-"], ["serve-stream"]):
        result = CliRunner().invoke(asr_cli, [*command, "--endpoint_ms", "5"])
        assert result.exit_code != 0 and "--endpoint_ms must be at least 10, got 5" in result.output, result.output


def test_list_settings_take_commas_or_json_lists_and_check_their_values(tmp_path):
    cfg = from_dict(TuneConfig, {"dataset": "a, b", "lm_weights": "0,1.5", "word_scores": [1, -1]})
    assert (cfg.dataset, cfg.lm_weights, cfg.word_scores) == (("a", "b"), (0.0, 1.5), (1.0, -1.0))
    assert config.to_params(cfg)["lm_weights"] == "0.0,1.5"
    with pytest.raises(config.ConfigError, match="--lm_weights must be comma-separated float values"):
        from_dict(TuneConfig, {"lm_weights": "0,heavy"})
    with pytest.raises(config.ConfigError, match="--word_scores is empty"):
        from_dict(TuneConfig, {"word_scores": ""})
    with pytest.raises(config.ConfigError, match="--config: huge not among default, classic"):
        from_dict(settings.BenchTrainConfig, {"config": "default,huge"})
    recipe = tmp_path / "two.json"
    recipe.write_text('{"train_data": ["a", "b"], "test_data": ""}')
    train = from_dict(TrainConfig, config.load_settings(TrainConfig, recipe))
    assert (train.data.train_data, train.data.test_data) == (("a", "b"), ())


def test_main_py_options_cover_both_configs_once():
    params = [p.name for p in load_main_py().main.params if p.name != "help"]
    assert len(params) == len(set(params))
    assert set(params) == {"train"} | set(names(TrainConfig)) | set(names(ValidateConfig))


def test_cli_options_build_the_config():
    args = ["--epoch", "3", "--learning-rate", "0.01", "--promote", "never", "--run_name", "x", "--file_id", "1-2-3"]
    ctx = load_main_py().main.make_context("main.py", args)
    cfg = config.to_dict(from_dict(TrainConfig, ctx.params))
    assert (cfg["epoch"], cfg["learning_rate"], cfg["promote"], cfg["run_name"]) == (3, 0.01, "never", "x")
    assert from_dict(ValidateConfig, ctx.params).file_id == "1-2-3"
    with pytest.raises(click.BadParameter):
        asr_cli.commands["train"].make_context("train", ["--promote", "sometimes"])


def test_config_json_round_trip(tmp_path):
    cfg = from_dict(TrainConfig, dict(epoch=2, run_name="r", promote="always"), strict=True)
    config.save(cfg, tmp_path / "config.json")
    import json

    assert from_dict(TrainConfig, json.loads((tmp_path / "config.json").read_text())) == cfg
    # keys of other configs are ignored
    assert from_dict(ValidateConfig, {**config.to_dict(cfg), "file_id": "1-2-3"}) == ValidateConfig(file_id="1-2-3")


def test_settings_file_is_overridden_by_options_given_on_the_command_line(tmp_path):
    from asr import UserError
    from asr.cli import with_settings_file

    settings = tmp_path / "recipe.json"
    settings.write_text('{"epoch": 7, "n_mfcc": 20, "run_name": "from-file"}')
    ctx = asr_cli.commands["train"].make_context("train", ["--config", str(settings), "--epoch", "3"])
    with ctx:
        options = {k: v for k, v in ctx.params.items() if k != "config_file"}
        cfg, given = with_settings_file(options, ctx.params["config_file"])
    assert (cfg.optim.epoch, cfg.features.n_mfcc, cfg.tracking.run_name, cfg.optim.batch) == (3, 20, "from-file", 16)
    assert given == {"epoch", "n_mfcc", "run_name"}  # what a --resume may not silently drop
    settings.write_text('{"epochs": 7}')
    with ctx, pytest.raises(UserError, match="unknown setting.*epochs"):
        with_settings_file(options, str(settings))


def test_shipped_recipes_name_only_real_settings():
    for recipe in (REPO / "recipes").glob("*.json"):
        assert config.load_settings(TrainConfig, recipe), recipe


def bounded_settings() -> list[tuple[type, dataclasses.Field]]:
    return [(cls, f) for cls in (TrainConfig, TuneConfig, ServerConfig) for f in config.fields(cls)
            if f.metadata.get("min") is not None or f.metadata.get("below") is not None]


@pytest.mark.parametrize("cls, f", bounded_settings(), ids=lambda x: getattr(x, "name", ""))
def test_every_range_is_checked_when_the_config_is_built(cls, f):
    low, high = f.metadata.get("min"), f.metadata.get("below")
    bad = low - 1 if low is not None else high
    with pytest.raises(config.ConfigError, match=f"^--{f.name} must be"):
        from_dict(cls, {f.name: config._TYPES[f.type](bad)})
    edge = low if low is not None else high / 2
    # n_mfcc may not exceed n_mels; a lookahead other than the default needs a streaming model
    companions = {"n_mfcc": 1} if f.name == "n_mels" else {"streaming": True} if f.name == "lookahead" else {}
    assert config.to_dict(from_dict(cls, {f.name: config._TYPES[f.type](edge), **companions}))[f.name] == edge


def test_sections_keep_flat_names_and_round_trip():
    names = [f.name for f in config.fields(TrainConfig)]
    assert len(names) == len(set(names)), "a setting name appears in two sections"
    cfg = from_dict(TrainConfig, {"hop_ms": 12.5, "epoch": 3, "promote": "never", "not_a_setting": 1})
    assert (cfg.features.hop_ms, cfg.optim.epoch, cfg.tracking.promote) == (12.5, 3, "never")
    assert from_dict(TrainConfig, config.to_dict(cfg)) == cfg
    with pytest.raises(config.ConfigError, match="unknown setting.*not_a_setting"):
        from_dict(TrainConfig, {"not_a_setting": 1}, strict=True)
    with pytest.raises(config.ConfigError, match="--n_mfcc .* cannot exceed --n_mels"):
        from_dict(TrainConfig, {"n_mfcc": 81})


@pytest.mark.slow
@pytest.mark.parametrize("args", [["asr", "train", "--epoch", "0"], ["asr", "train", "--dropout", "1"],
                                  ["main.py", "--n_mfcc", "100", "--n_mels", "40"]])
def test_impossible_settings_fail_in_one_line_before_any_data_is_read(args, tmp_path):
    command = asr_command() + args[1:] if args[0] == "asr" else [sys.executable, str(REPO / "main.py"), *args[1:]]
    proc = run_cli(command + ["--train_data", str(tmp_path / "missing")], cwd=tmp_path)
    assert one_line_error(proc) is None, proc.stderr
    assert "must be" in proc.stderr or "cannot exceed" in proc.stderr
    assert "missing" not in proc.stderr and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("text, message", [('{"epoch": "many"}', "epoch must be int"),
                                           ('{"offline_ok": "yes"}', "offline_ok must be true or false"),
                                           ('{"train_data": 3}', "train_data must be a list"),
                                           ('{"dropout": 1.5}', "--dropout must be below 1")])
def test_a_settings_file_with_a_wrong_value_is_one_line(tmp_path, text, message):
    recipe = tmp_path / "bad.json"
    recipe.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        from_dict(TrainConfig, config.load_settings(TrainConfig, recipe))


# ---------------------------------------------------------------- names the registry refuses, files that must exist

@pytest.mark.parametrize("cls, values, message", [
    (TrainConfig, {"registered_model": "team/asr"}, "--registered_model 'team/asr': MLflow refuses it: "
                                                    "Invalid model name 'team/asr'. Names cannot contain '/' or ':'"),
    (TrainConfig, {"registered_model": "../asr"}, "--registered_model '../asr': MLflow refuses it"),
    (TrainConfig, {"experiment": ""}, "--experiment '': MLflow refuses it"),
    (ValidateConfig, {"registered_model": "a:b"}, "--registered_model 'a:b'"),
    (ValidateConfig, {"model_alias": "latest"}, "--model_alias 'latest': MLflow refuses it"),
    (ValidateConfig, {"model_stage": "Prod"}, "--model_stage 'Prod': MLflow refuses it: Invalid Model Version stage"),
    (ValidateConfig, {"model_version": "one"}, "--model_version 'one': a model version is a number"),
    (settings.EvaluateConfig, {"model_uri": "models:/team/asr/1"}, "Not a proper models:/ URI"),
    (settings.TranscribeConfig, {"model_uri": "models:/team:asr@production"}, "Names cannot contain"),
    (settings.ExportConfig, {"model_uri": "models:/asr@no alias", "out": "x"}, "Invalid alias name"),
], ids=["train-name-slash", "train-name-dotdot", "train-experiment-empty", "validate-name-colon",
        "validate-alias-latest", "validate-stage", "validate-version", "evaluate-uri-parts", "transcribe-uri-colon",
        "export-uri-alias"])
def test_names_mlflow_refuses_are_refused_when_the_settings_are_built(cls, values, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        from_dict(cls, values)


def test_names_mlflow_takes_are_taken():
    for uri in ("models:/asr/3", "models:/asr@production", "models:/asr/Production", "models:/asr/latest",
                "runs:/0123/model", "outputs/run"):
        assert from_dict(settings.EvaluateConfig, {"model_uri": uri}).model_uri == uri
    assert from_dict(ValidateConfig, {"model_alias": "prod-2", "model_version": "12"}).model_version == "12"


def test_a_registered_model_name_mlflow_refuses_fails_before_any_data_is_read(short_dev, tmp_path):
    """Issue 13, kind 3: `--registered_model team/asr` used to train to the end and then fail with a traceback
    when MLflow refused the name; now it is one line before anything is read, written or trained."""
    from conftest import make_tiny_config, tiny_args

    cfg = make_tiny_config(short_dev, output_dir=str(tmp_path / "outputs"))
    proc = run_cli(asr_command() + ["train", *tiny_args(cfg), "--registered_model", "team/asr"], cwd=tmp_path,
                   timeout=240)
    assert one_line_error(proc) is None, proc.stderr[-3000:]
    assert "--registered_model 'team/asr'" in proc.stderr and "Names cannot contain '/' or ':'" in proc.stderr
    assert proc.stdout == ""  # nothing loaded or trained ("train: N utterances ..." is printed once data is read)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_a_missing_lexicon_is_refused_before_the_model_loads(short_dev, tmp_path):
    """The decoder used to find a missing --lexicon only once the model was loaded (or failed to load: then the
    user fixed that first and met this next); every command now checks the paths its settings name first."""
    audio = next(short_dev.rglob("*.flac"))
    missing = tmp_path / "lexicon.txt"
    commands = (["transcribe", "--lexicon", str(missing), "--model_uri", "models:/NoSuchModel@production", str(audio)],
                ["evaluate", "--lexicon", str(missing), "--model_uri", "models:/NoSuchModel@production",
                 "--dataset", str(short_dev)],
                ["transcribe", "--model_uri", "models:/NoSuchModel@production", str(audio),
                 str(tmp_path / "nope.flac")])
    for i, args in enumerate(commands):
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the first as a real `asr` process, the others in this one
        proc = (run_cli(asr_command() + args, cwd=tmp_path, tracking_uri=uri) if i == 0
                else run_cli_here(args, cwd=tmp_path, tracking_uri=uri))
        assert one_line_error(proc) is None, proc.stderr[-3000:]
        expected = f"--lexicon {missing}: no such file" if "--lexicon" in args else f"{tmp_path / 'nope.flac'}: " \
            "no such file"
        assert expected in proc.stderr and "NoSuchModel" not in proc.stderr, proc.stderr
        assert proc.stdout == ""
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def settings_classes(cls: type) -> list[type]:
    """A settings class and the section classes it nests."""
    found = [cls]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            found += settings_classes(f.default_factory)
    return found


def test_every_default_passes_its_own_check():
    """Settings built from defaults skip the checks (so a bad argument is refused without importing MLflow): that
    is only sound while every default passes its check."""
    checked = 0
    for cls in {c for command in COMMANDS.values() for c in settings_classes(command)}:
        for f in dataclasses.fields(cls):
            if check := f.metadata.get("check"):
                assert not check(f.default), (cls.__name__, f.name, f.default)
                checked += 1
    assert checked >= 8


def test_a_malformed_file_id_is_refused_before_mlflow_or_torch_is_imported():
    code = ("import sys; from asr.settings import ValidateConfig\n"
            "try:\n    ValidateConfig(file_id='../x')\nexcept Exception as e:\n    print(e)\n"
            "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["--file_id '../x': invalid file id: expected SPEAKER-CHAPTER-UTTERANCE digits, "
                                "e.g. 1089-134686-0000", "[]"], out
