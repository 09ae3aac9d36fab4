"""The check set kept with every version, and registering files a version already holds."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.errors import IdenticalVersion, InvalidInput, ModelNotFound
from shipyard.registry import Registry, checkset
from shipyard.registry import registry as registry_module
from shipyard.registry.artifacts import sha256_file
from shipyard.registry.model import manifest_digest
from shipyard.signature import infer_signature


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    X = frame(400, seed=1)
    return LogisticRegression().fit(X, (X.a + X.b > 0).astype(int))


@pytest.fixture
def model_file(model: LogisticRegression, tmp_path: Path) -> Path:
    path = tmp_path / "m.skops"
    sio.dump(model, path)
    return path


# -- the file format ---------------------------------------------------------------------------


def every_datatype() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "flag": np.array([True, False, True]),
        "u8": np.array([0, 7, 255], dtype=np.uint8),
        "u64": np.array([0, 1, 2**64 - 1], dtype=np.uint64),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "i16": np.array([-1, 0, 1], dtype=np.int16),
        "i32": np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
        "i64": np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64),
        "f16": np.array([0.5, np.nan, -2.0], dtype=np.float16),
        "f32": np.array([1e-30, np.inf, -np.inf], dtype=np.float32),
        "f64": np.array([np.pi, np.nan, 1e300]),
        # NumPy's own string arrays drop trailing NULs; the check set must not
        "text": np.array(["a", "b\x00", "été"], dtype=object),
        "raw": np.array([b"\x00\xff", b"", b"x\x00"], dtype=object),
        "mixed": np.array(["text", b"bytes", ""], dtype=object),
        "image": np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2),
        "words": np.array([["a", "bb"], ["", "c"], ["d", "e\x00"]], dtype=object),
    }


def test_every_datatype_round_trips_exactly_without_pickle() -> None:
    arrays = every_datatype()
    sig = infer_signature(arrays)
    data = checkset.encode(sig, arrays)

    back = checkset.decode(sig, data)
    for name, arr in arrays.items():
        got = back[name]
        assert got.shape == arr.shape, name
        if arr.dtype.kind == "O":
            assert got.dtype.kind == "O"
            assert [(type(x), x) for x in got.ravel()] == [(type(x), x) for x in arr.ravel()], name
        else:
            assert got.dtype == arr.dtype, name
            np.testing.assert_array_equal(got, arr, err_msg=name)  # NaN equals NaN here
    # a plain .npz that NumPy reads with pickle refused
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert npz["i0"].tolist() == [True, False, True]


def test_the_same_rows_always_make_the_same_bytes() -> None:
    arrays = every_datatype()
    sig = infer_signature(arrays)
    first = checkset.encode(sig, arrays)
    second = checkset.encode(sig, {k: v.copy() for k, v in arrays.items()})

    assert first == second
    import io

    assert {i.date_time for i in zipfile.ZipFile(io.BytesIO(first)).infolist()} == {(1980, 1, 1, 0, 0, 0)}


# -- registration ---------------------------------------------------------------------------------


def test_a_500_row_sample_is_kept_whole_and_covered_by_the_digest(registry: Registry, model: Any) -> None:
    X = frame(500)
    mv = registry.register(model, "m", sample=X)

    assert mv.check_set == {"file": "check_set.npz", "rows": 500, "from": "sample", "of": 500}
    assert "check_set.npz" in mv.files and mv.digest == manifest_digest(mv.files)
    folder = Path(mv.artifact_uri)
    assert mv.files["check_set.npz"] == sha256_file(folder / "check_set.npz")
    stored = registry.check_set(mv)
    assert stored is not None and stored.rows == 500 and stored.note is None
    assert stored.checked_on() == "checked on 500 rows"
    np.testing.assert_array_equal(stored.inputs["a"], X["a"].to_numpy())
    # the small input example stays, for docs
    assert registry.input_example(mv) == {c: X[c].head(5).tolist() for c in X.columns}
    # and the record survives a reopen
    assert registry.get("m:1").check_set == mv.check_set


def test_above_1000_rows_a_seeded_choice_is_kept_in_order_and_the_record_says_so(
    registry: Registry, model_file: Path
) -> None:
    X = frame(5000)
    mv = registry.register(model_file, "m", sample=X)

    info = mv.check_set
    assert (info["rows"], info["of"], info["seed"]) == (1000, 5000, checkset.SEED)
    assert "1000 of 5000 rows chosen at random (seed 0)" in info["sampled"]
    stored = registry.check_set(mv)
    assert stored is not None and stored.rows == 1000
    positions = np.searchsorted(X["a"].sort_values().to_numpy(), stored.inputs["a"])
    index = X["a"].sort_values().index.to_numpy()[positions]
    assert (np.diff(index) > 0).all(), "the kept rows keep the sample's order"
    assert index.max() > 1000, "the rows come from the whole sample, not its head"
    # the same sample keeps the same rows: the same files, so the same version
    with pytest.raises(IdenticalVersion, match="identical to m:1"):
        registry.register(model_file, "m", sample=X.copy())


def test_a_small_sample_is_kept_with_the_reason_checks_will_give(registry: Registry, model: Any) -> None:
    mv = registry.register(model, "m", sample=frame(37))

    assert mv.check_set["note"] == "the sample had only 37"
    stored = registry.check_set(mv)
    assert stored is not None
    assert stored.checked_on() == "checked on 37 rows: the sample had only 37"


def test_check_data_replaces_the_sample_rows(registry: Registry, model: Any) -> None:
    check = frame(250, seed=7)
    mv = registry.register(model, "m", sample=frame(5), check_data=check)

    assert (mv.check_set["rows"], mv.check_set["from"]) == (250, "check_data")
    stored = registry.check_set(mv)
    assert stored is not None
    np.testing.assert_array_equal(stored.inputs["b"], check["b"].to_numpy())
    assert len(registry.input_example(mv)["a"]) == 5  # type: ignore[index]

    few = registry.register(model, "m", sample=frame(5), check_data=frame(12))
    assert few.check_set["note"] == "the check data had only 12"


def test_check_data_that_does_not_fit_the_signature_is_refused_before_anything_is_written(
    registry: Registry, settings: Settings, model: Any
) -> None:
    bad = frame(20).assign(label=1)
    with pytest.raises(InvalidInput, match="check_data does not fit the signature: unexpected input 'label'") as info:
        registry.register(model, "m", sample=frame(5), check_data=bad)

    assert info.value.field == "check_data"
    with pytest.raises(ModelNotFound):
        registry.versions("m")
    assert not (Path(settings.resolved_artifacts) / "m").exists()


def test_a_version_from_before_check_sets_falls_back_to_its_input_example_and_says_so(
    registry: Registry, model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what registration wrote before check sets were kept: the 5-row example and no check_set record
    monkeypatch.setattr(registry_module, "_write_check_set", lambda *a: {})
    mv = registry.register(model, "old", sample=frame(500))
    monkeypatch.undo()

    assert mv.check_set == {} and "check_set.npz" not in mv.files
    stored = registry.check_set(mv)
    assert stored is not None and stored.rows == 5
    assert stored.checked_on().startswith("checked on 5 rows: old:1 predates check sets and keeps only its "
                                          "5-row input example")


def test_a_tampered_check_set_refuses_to_load(registry: Registry, model: Any) -> None:
    mv = registry.register(model, "m", sample=frame(200))
    path = Path(mv.artifact_uri) / "check_set.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))

    from shipyard.errors import ArtifactIntegrityError

    with pytest.raises(ArtifactIntegrityError, match="'check_set.npz'"):
        registry.check_set(mv)


# -- identical files --------------------------------------------------------------------------------


def test_registering_the_same_file_again_is_refused_by_default_with_the_way_out(
    registry: Registry, model_file: Path
) -> None:
    first = registry.register(model_file, "fraud", sample=frame(120), tags={"run": "1"})

    with pytest.raises(IdenticalVersion) as info:
        registry.register(model_file, "fraud", sample=frame(120), tags={"run": "2"}, description="again",
                          metrics={"auc": 0.9}, alias="champion")

    assert str(info.value) == (
        f"identical to fraud:1 (same files, sha256 {first.digest[:12]}); pass if_identical='reuse' to get that "
        "version back (CLI --if-identical reuse) or 'new' to register a copy"
    )
    assert (info.value.name, info.value.version, info.value.digest) == ("fraud", 1, first.digest)
    assert [v.version for v in registry.versions("fraud")] == [1]
    assert registry.aliases("fraud") == {}, "a refused registration moves no alias"


def test_reuse_returns_the_existing_version_and_still_moves_the_alias(registry: Registry, model_file: Path) -> None:
    first = registry.register(model_file, "fraud", sample=frame(120), tags={"run": "1"})
    registry.register(model_file, "fraud", sample=frame(130), if_identical="refuse")  # other rows: other files

    again = registry.register(model_file, "fraud", sample=frame(120), tags={"run": "2"}, if_identical="reuse",
                              alias="champion")

    assert again == first and again.tags == {"run": "1"}  # versions never change
    assert registry.aliases("fraud") == {"champion": 1}
    registry.register(model_file, "fraud", sample=frame(120), if_identical="reuse", alias="champion")
    assert len(registry.alias_history("fraud", "champion")) == 1, "re-running it moves nothing"


def test_new_registers_a_copy_and_the_files_are_stored_once(registry: Registry, model_file: Path) -> None:
    first = registry.register(model_file, "fraud", sample=frame(120))
    copy = registry.register(model_file, "fraud", sample=frame(120), if_identical="new")

    assert (copy.version, copy.digest, copy.artifact_uri) == (2, first.digest, first.artifact_uri)
    # the oldest holder is named
    with pytest.raises(IdenticalVersion, match="identical to fraud:1"):
        registry.register(model_file, "fraud", sample=frame(120))


def test_the_same_files_with_other_runtime_options_or_another_name_are_not_identical(
    registry: Registry, model_file: Path
) -> None:
    registry.register(model_file, "fraud", sample=frame(120))
    proba = registry.register(model_file, "fraud", sample=frame(120), methods=["predict", "predict_proba"])
    other = registry.register(model_file, "other", sample=frame(120))

    assert (proba.ref, other.ref) == ("fraud:2", "other:1")


def test_the_same_files_with_another_extra_fields_policy_are_not_identical(
    registry: Registry, model_file: Path
) -> None:
    # the policy decides what requests are accepted, so reusing the refusing version would be wrong
    registry.register(model_file, "fraud", sample=frame(120))
    passing = registry.register(model_file, "fraud", sample=frame(120), extra_fields="passthrough")

    assert passing.ref == "fraud:2"
    assert passing.signature.extra_fields == "passthrough"


def test_an_unknown_if_identical_is_refused_with_the_nearest_choice(registry: Registry, model_file: Path) -> None:
    with pytest.raises(InvalidInput, match=r"if_identical must be one of 'refuse', 'reuse', 'new', got 'resue'; "
                                           r"did you mean 'reuse'\?") as info:
        registry.register(model_file, "fraud", sample=frame(5), if_identical="resue")
    assert info.value.field == "if_identical"
    with pytest.raises(ModelNotFound):
        registry.versions("fraud")


# -- the CLI -----------------------------------------------------------------------------------------


def run(home: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False,
                              env={"COLUMNS": "200"})


def test_cli_register_keeps_the_check_data_and_says_how_many_rows(tmp_path: Path, model_file: Path) -> None:
    home = tmp_path / "home"
    frame(5).to_csv(tmp_path / "sample.csv", index=False)
    frame(500, seed=3).to_csv(tmp_path / "check.csv", index=False)
    frame(20).to_csv(tmp_path / "few.csv", index=False)

    out = run(home, "register", "fraud", str(model_file), "--sample", str(tmp_path / "sample.csv"),
              "--check-data", str(tmp_path / "check.csv"))
    assert out.exit_code == 0, out.output
    assert "registered fraud:1" in out.output
    assert "check set: 500 rows of the check data" in out.output

    few = run(home, "register", "fraud", str(model_file), "--sample", str(tmp_path / "few.csv"))
    assert few.exit_code == 0, few.output
    assert ("check set: 20 rows of the sample (fewer than 100: the sample had only 20; pass --check-data FILE "
            "with more rows)") in few.output


def test_cli_register_refuses_reuses_or_copies_identical_files(tmp_path: Path, model_file: Path) -> None:
    home = tmp_path / "home"
    frame(150).to_csv(tmp_path / "sample.csv", index=False)
    args = ["register", "fraud", str(model_file), "--sample", str(tmp_path / "sample.csv")]
    assert run(home, *args).exit_code == 0

    refused = run(home, *args, "--alias", "champion")
    assert refused.exit_code == 1
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: identical to fraud:1 ")
    assert "--if-identical reuse" in lines[0]

    reused = run(home, *args, "--if-identical", "reuse", "--alias", "champion")
    assert reused.exit_code == 0, reused.output
    assert "identical to fraud:1" in reused.output and "alias champion -> 1" in reused.output

    copied = run(home, *args, "--if-identical", "new")
    assert copied.exit_code == 0 and "registered fraud:2" in copied.output

    wrong = run(home, *args, "--if-identical", "reused")
    assert wrong.exit_code == 2 and "'reused' is not one of 'refuse', 'reuse', 'new'" in wrong.output


def test_the_quickstart_model_registers_twice_and_keeps_all_of_iris_as_its_check_set(registry: Registry) -> None:
    from shipyard.demo import register_demo

    first = register_demo(registry)
    second = register_demo(registry)  # `shipyard quickstart` run again in the same home

    assert first.check_set["rows"] == 150 and "note" not in first.check_set
    assert registry.resolve("demo@champion") == second.version
    assert len(registry.input_example(first)["sepal_length"]) == 5  # type: ignore[index]
