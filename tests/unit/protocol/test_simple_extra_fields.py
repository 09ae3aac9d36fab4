"""The extra_fields policy where it lives: the signature (stored, split), the /v1 codec, registration, settings."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.errors import ConfigError, InvalidInput
from shipyard.protocol import simple
from shipyard.registry import Registry
from shipyard.signature import Signature, TensorSpec
from shipyard.types import InferenceResponse, Tensor

HINT = "(set extra_fields to 'ignore' or 'passthrough' to accept other fields)"


def sig(policy: str = "refuse", datatype: str = "FP64") -> Signature:
    inputs = (TensorSpec("age", datatype, (-1,)), TensorSpec("income", "FP64", (-1,)))
    return Signature(inputs=inputs, format="columns", extra_fields=policy)


def decode(doc: Any, signature: Signature) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    request, passthrough = simple.decode_predict(orjson.dumps(doc), signature)
    return signature.validate({t.name: t.data for t in request.inputs}), passthrough


# -- stored with the signature --------------------------------------------------------------


def test_the_policy_is_stored_only_when_set_and_old_signatures_read_as_refuse() -> None:
    old = {"format": "columns", "inputs": [{"name": "age", "datatype": "FP64", "shape": [-1]}], "outputs": []}
    assert Signature.from_dict(old).extra_fields == "refuse"
    assert "extra_fields" not in sig().to_dict()
    stored = sig("passthrough").to_dict()
    assert stored["extra_fields"] == "passthrough"
    assert Signature.from_dict(stored) == sig("passthrough")
    assert sig("ignore").with_outputs({"y": np.array([1, 0])}).extra_fields == "ignore"
    with pytest.raises(ValueError, match="extra_fields must be one of refuse, ignore, passthrough"):
        sig("drop")


def test_split_extra_refuses_drops_or_keeps_by_the_policy() -> None:
    columns = {"age": [1], "income": [2.0], "id": [7]}
    with pytest.raises(InvalidInput) as info:
        sig().split_extra(columns)
    assert info.value.message == f"unexpected input 'id': this model takes 'age', 'income' {HINT}"
    assert info.value.field == "id"
    assert sig("ignore").split_extra(columns) == ({"age": [1], "income": [2.0]}, {})
    assert sig("passthrough").split_extra(columns) == ({"age": [1], "income": [2.0]}, {"id": [7]})


def test_validate_keeps_the_tensor_contract_whatever_the_policy() -> None:
    for policy in ("refuse", "ignore", "passthrough"):
        with pytest.raises(InvalidInput) as info:
            sig(policy).validate({"age": np.array([1.0]), "income": np.array([2.0]), "id": np.array([7.0])})
        assert info.value.message == "unexpected input 'id': this model takes 'age', 'income'"


def test_an_unknown_name_next_to_a_missing_input_is_offered_as_the_typo_it_is() -> None:
    with pytest.raises(InvalidInput, match=r"unexpected input 'incme'.*did you mean 'income'\?"):
        sig().validate({"age": np.array([1.0]), "incme": np.array([2.0])})


# -- the /v1 codec ----------------------------------------------------------------------------


ROWS = [{"age": 30, "income": 1.5, "id": "a"}, {"age": 40, "income": 2.5, "id": "b", "tags": ["x"]}]


@pytest.mark.parametrize("datatype", ["FP64", "INT64"], ids=["float-fast-path", "general-path"])
def test_records_under_each_policy(datatype: str) -> None:
    with pytest.raises(InvalidInput, match="unexpected input 'id'.*" + HINT.replace("(", r"\(").replace(")", r"\)")):
        decode({"instances": ROWS}, sig(datatype=datatype))
    arrays, passthrough = decode({"instances": ROWS}, sig("ignore", datatype))
    assert passthrough is None and arrays["age"].tolist() == [30, 40] and set(arrays) == {"age", "income"}
    arrays, passthrough = decode({"instances": ROWS}, sig("passthrough", datatype))
    assert passthrough == [{"id": "a"}, {"id": "b", "tags": ["x"]}] and arrays["income"].tolist() == [1.5, 2.5]


def test_a_bad_feature_beside_extra_fields_is_named_as_before() -> None:
    rows = [{"age": "old", "income": 1.0, "id": 1}]
    with pytest.raises(InvalidInput) as info:
        decode({"instances": rows}, sig("passthrough"))
    assert info.value.field == "age"


def test_columns_under_each_policy() -> None:
    doc = {"inputs": {"age": [30, 40], "income": [1.5, 2.5], "id": ["a", "b"]}}
    with pytest.raises(InvalidInput, match="unexpected input 'id'"):
        decode(doc, sig())
    assert decode(doc, sig("ignore"))[1] is None
    assert decode(doc, sig("passthrough"))[1] == [{"id": "a"}, {"id": "b"}]
    not_a_list = {"inputs": {"age": [30], "income": [1.5], "batch": "b-7"}}
    assert decode(not_a_list, sig("ignore"))[1] is None  # ignored means not looked at
    with pytest.raises(InvalidInput, match="extra field 'batch': expected a list of 1 values"):
        decode(not_a_list, sig("passthrough"))


def test_positional_rows_pass_nothing_through_but_keep_the_response_shape() -> None:
    arrays, passthrough = decode({"instances": [[30, 1.5], [40, 2.5]]}, sig("passthrough"))
    assert passthrough == [{}, {}] and arrays["age"].tolist() == [30, 40]


def test_the_response_has_passthrough_only_when_given() -> None:
    resp = InferenceResponse("m", "1", [Tensor("predict", np.array([1, 0]))], id="r")
    assert "passthrough" not in simple.encode_response(resp)
    assert simple.encode_response(resp, [{"id": "a"}, {}])["passthrough"] == [{"id": "a"}, {}]


# -- registration, settings, and the Python predict ------------------------------------------------


X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [3.0, 2.0, 1.0, 0.0]})


def test_register_stores_the_policy_and_refuses_a_bad_one_before_writing(registry: Registry) -> None:
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    with pytest.raises(InvalidInput) as info:
        registry.register(model, "m", sample=X, extra_fields="passthru")
    assert info.value.message == (
        "extra_fields must be 'refuse', 'ignore' or 'passthrough', got 'passthru'; did you mean 'passthrough'?"
    )
    assert registry.models() == []
    registry.register(model, "m", sample=X, extra_fields="ignore")
    assert registry.get("m").signature.extra_fields == "ignore"
    loaded = registry.load("m")
    out = loaded.predict(X.assign(order_id=[1, 2, 3, 4]))  # a DataFrame in gives a DataFrame out
    assert out["predict"].tolist() == model.predict(X).tolist()
    registry.register(model, "strict", sample=X)
    with pytest.raises(InvalidInput, match="unexpected input 'order_id'.*set extra_fields"):
        registry.load("strict").predict(X.assign(order_id=[1, 2, 3, 4]))


def test_settings_parse_one_policy_per_model_and_refuse_bad_ones() -> None:
    assert Settings().extra_fields_overrides == {}
    assert Settings(extra_fields=" ignore , fraud=passthrough").extra_fields_overrides == {
        "*": "ignore", "fraud": "passthrough"
    }
    assert Settings.from_env({"SHIPYARD_EXTRA_FIELDS": "fraud=ignore"}).extra_fields_overrides == {"fraud": "ignore"}
    with pytest.raises(ConfigError, match="extra_fields for fraud must be .* got 'ignor'; did you mean 'ignore'"):
        Settings(extra_fields="fraud=ignor")
    with pytest.raises(ConfigError, match="extra_fields: invalid model name 'a b'"):
        Settings(extra_fields="a b=ignore")
