"""`if-better` promotion compares dev WERs only between versions scored on the same dev set (tag dev_digest)."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import MODEL_NAME, asr_command, make_tiny_config, one_line_error, run_cli, run_cli_here, short_split
from mlflow import MlflowClient

from asr.data.dataset import read_split, split_digest
from asr.tracking import registry

DEV, OTHER_DEV = "d1d1d1d1d1d1d1d1", "e2e2e2e2e2e2e2e2"  # the dev_digests of two dev sets


def production(client: MlflowClient, name: str) -> tuple[str, set[str]]:
    """(the version the production alias is on, the versions in stage Production)."""
    alias = str(client.get_model_version_by_alias(name, registry.PRODUCTION_ALIAS).version)
    staged = {str(v.version) for v in client.search_model_versions(f"name='{name}'")
              if v.current_stage == registry.PRODUCTION_STAGE}
    return alias, staged


def by_hand(client: MlflowClient, name: str, tags: dict[str, str]) -> str:
    """A version registered by hand (no run, only the given tags); returns its number."""
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, source=f"file:///nowhere/{name}/by-hand", tags=tags).version)


def test_same_dev_set_compares_dev_wers_as_before(isolated_mlflow: str):
    client, name = MlflowClient(), "SameDevSet"
    registry.register_and_promote("file:///nowhere/1", name, "run-1", 0.6, DEV, "always")
    better = registry.register_and_promote("file:///nowhere/2", name, "run-2", 0.4, DEV, "if-better")
    worse = registry.register_and_promote("file:///nowhere/3", name, "run-3", 0.5, DEV, "if-better")
    assert better.describe() == ("version 2 promoted to Production (alias production) (policy if-better; "
                                 "dev WER 0.400 vs version 1's 0.600)")
    assert worse.describe() == "version 3 not promoted (policy if-better; dev WER 0.500 vs version 2's 0.400)"
    assert production(client, name) == ("2", {"2"})
    assert client.get_model_version(name, "3").tags[registry.DEV_DIGEST_TAG] == DEV


def test_a_production_version_without_dev_digest_is_kept_with_the_reason(isolated_mlflow: str):
    """A version registered before versions recorded their dev set (its val_wer may be a greedy WER), or by hand:
    even a far lower dev WER does not replace it, and the line says why and how to promote anyway."""
    client, name = MlflowClient(), "NoDigest"
    old = by_hand(client, name, {registry.WER_TAG: "0.900000"})
    registry.promote(name, old)
    new = registry.register_and_promote("file:///nowhere/2", name, "run-2", 0.1, DEV, "if-better")
    assert (new.promoted, new.previous, new.previous_digest) == (False, old, "")
    line = new.describe()
    assert line == (f"version 2 not promoted (policy if-better; Production version {old} has no dev_digest "
                    "(registered before versions recorded their dev set, or by hand), so its dev WER does not "
                    f"compare with this version's; promote it by hand with asr promote --registered_model {name} "
                    "--model_version 2, or train with --promote always)"), line
    assert production(client, name) == (old, {old})
    assert registry.CONTENDER_TAG not in client.get_model_version(name, "2").tags  # it never contended
    # the way out the line names works, and `always` says it did not compare either
    registry.promote(name, "2")
    assert production(client, name) == ("2", {"2"})
    forced = registry.register_and_promote("file:///nowhere/3", name, "run-3", 0.5, OTHER_DEV, "always")
    assert forced.promoted and "was scored on another dev set (dev_digest d1d1d1d1d1d1d1d1, this version's " \
        "e2e2e2e2e2e2e2e2), so their dev WERs do not compare)" in forced.describe()


def test_a_contender_on_another_dev_set_is_ignored(isolated_mlflow: str):
    """A recent contender with a far lower dev WER, scored on another dev set, neither stops an `if-better`
    promotion nor takes Production from it when the promoter settles the contest; one on the same dev set does."""
    client, name = MlflowClient(), "OtherContender"
    registry.register_and_promote("file:///nowhere/1", name, "run-1", 0.6, DEV, "always")
    claimed = f"{time.time():.3f}"
    elsewhere = by_hand(client, name, {registry.WER_TAG: "0.050000", registry.DEV_DIGEST_TAG: OTHER_DEV,
                                       registry.CONTENDER_TAG: claimed})
    mine = registry.register_and_promote("file:///nowhere/3", name, "run-3", 0.4, DEV, "if-better")
    assert (mine.version, mine.promoted, mine.previous) == ("3", True, "1")
    assert production(client, name) == ("3", {"3"})
    assert registry.settle_contest(client, name) == "3" and elsewhere == "2"
    # the same contender on this dev set is better: the next one yields to it
    client.set_model_version_tag(name, elsewhere, registry.DEV_DIGEST_TAG, DEV)
    assert registry.settle_contest(client, name) == elsewhere
    later = registry.register_and_promote("file:///nowhere/4", name, "run-4", 0.3, DEV, "if-better")
    assert not later.promoted and later.describe().endswith(f"dev WER 0.300 vs version {elsewhere}'s 0.050)")


def test_if_better_refuses_to_compare_versions_trained_on_different_dev_sets(short_dev: Path, tmp_path: Path,
                                                                               isolated_mlflow: str, capsys):
    """Two real trainings, the second validated on one utterance less: its dev WER is not compared with the
    first's, it stays out of Production, and the one printed line names both dev sets' digests and the reason.
    Each version carries the digest of its dev split, the one the run lists under Datasets."""
    from asr.training.train import train

    dev_sets = [short_dev, short_split(tmp_path / "dev3" / "dev-clean", short_dev, 3)]
    digests = [split_digest(read_split(d)) for d in dev_sets]
    assert digests[0] != digests[1]
    results = [train(make_tiny_config(short_dev, dev_data=str(d), output_dir=str(tmp_path / "out")),
                     progress=False) for d in dev_sets]
    first, second = (r.promotion for r in results)
    assert (first.version, first.promoted, second.version, second.promoted) == ("1", True, "2", False)
    line = (f"{MODEL_NAME} version 2 not promoted (policy if-better; Production version 1 was scored on another "
            f"dev set (dev_digest {digests[0]}, this version's {digests[1]}), so their dev WERs do not compare; "
            f"promote it by hand with asr promote --registered_model {MODEL_NAME} --model_version 2, or train with "
            "--promote always)")
    printed = capsys.readouterr().out
    assert line in printed.splitlines(), printed
    client = MlflowClient()
    assert production(client, MODEL_NAME) == ("1", {"1"})
    for version, digest, result in zip(("1", "2"), digests, results, strict=True):
        tags = client.get_model_version(MODEL_NAME, version).tags
        assert tags[registry.DEV_DIGEST_TAG] == digest
        validation = [d.dataset.digest for d in client.get_run(result.run_id).inputs.dataset_inputs
                      if {(t.key, t.value) for t in d.tags} & {("mlflow.data.context", "validation")}]
        assert validation == [digest]
    print(line)


def test_asr_promote_moves_alias_and_stage_to_the_version_it_names(tmp_path: Path, isolated_mlflow: str):
    """The way out the promotion line names: `asr promote` puts a version kept out by `if-better` in Production
    (alias and stage), and says what it replaced and why the dev WERs did not compare."""
    client, name = MlflowClient(), "ByHand"
    registry.register_and_promote("file:///nowhere/1", name, "run-1", 0.6, DEV, "always")
    kept_out = registry.register_and_promote("file:///nowhere/2", name, "run-2", 0.3, OTHER_DEV, "if-better")
    assert not kept_out.promoted
    # in this process: the next test runs `asr promote` as a real one
    proc = run_cli_here(["promote", "--registered_model", name, "--model_version", "2"], tmp_path, isolated_mlflow)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"{name} version 2 promoted to Production (alias production) (policy by hand; "
                                   "Production version 1 was scored on another dev set (dev_digest d1d1d1d1d1d1d1d1, "
                                   "this version's e2e2e2e2e2e2e2e2), so their dev WERs do not compare)")
    assert production(client, name) == ("2", {"2"})


def test_asr_promote_refuses_what_it_cannot_promote_in_one_line(tmp_path: Path, isolated_mlflow: str):
    registry.register_and_promote("file:///nowhere/1", "Kept", "run-1", 0.6, DEV, "always")
    cases = {("--registered_model", "Kept", "--model_version", "7"): "Kept has no version 7 in the model registry (",
             ("--registered_model", "Kept", "--model_version", "two"): "a model version is a number",
             ("--registered_model", "Nobody", "--model_version", "1"):
                 "there is no registered model Nobody in the model registry ("}
    for i, (args, says) in enumerate(cases.items()):  # the first as a real `asr` process, the others in this one
        proc = (run_cli([*asr_command(), "promote", *args], tmp_path, isolated_mlflow) if i == 0
                else run_cli_here(["promote", *args], tmp_path, isolated_mlflow))
        assert one_line_error(proc) is None, (args, proc.returncode, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)
        assert "registry" not in says or proc.stderr.rstrip().endswith(("; it has versions 1", "with asr train"))
    assert production(MlflowClient(), "Kept") == ("1", {"1"})


def test_asr_promote_of_the_production_version_says_it_already_is(tmp_path: Path, isolated_mlflow: str):
    registry.register_and_promote("file:///nowhere/1", "Kept", "run-1", 0.6, DEV, "always")
    proc = run_cli_here(["promote", "--registered_model", "Kept", "--model_version", "1"], tmp_path, isolated_mlflow)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Kept version 1 is already in Production (alias production); nothing to promote"
    assert production(MlflowClient(), "Kept") == ("1", {"1"})
