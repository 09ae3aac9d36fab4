"""What ``predict`` accepts (records, a DataFrame, arrays) as tensors, and its answer in the same kind."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.signature import sample_to_arrays
from shipyard.types import InferenceResponse, Tensor

FRAME, RECORDS, COLUMNS, ARRAY = "frame", "records", "columns", "array"


@dataclass
class Prepared:
    """Request tensors plus what is needed to answer in the caller's kind."""

    inputs: list[Tensor]
    kind: str
    index: Any = None


def kind_of(data: Any) -> str:
    """Which of the four accepted kinds ``data`` is."""
    if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
        return FRAME
    if isinstance(data, list) and data and all(isinstance(r, Mapping) for r in data):
        return RECORDS
    if isinstance(data, Mapping):
        return COLUMNS
    return ARRAY


def prepare(data: Any, input_names: list[str] | None = None) -> Prepared:
    """Named tensors for ``data``; a bare array goes to the model's only input, named in ``input_names``."""
    kind = kind_of(data)
    if kind == RECORDS and not data:
        raise InvalidInput("records must be a non-empty list of objects, one per row", field="records")
    arrays, _ = sample_to_arrays(data)
    if kind == ARRAY:
        if not input_names or len(input_names) != 1:
            raise InvalidInput(
                "an array can only go to a model with one input; this model takes "
                f"{', '.join(input_names or [])}: pass a dict of arrays, records or a DataFrame",
                field="inputs",
            )
        arrays = {input_names[0]: arrays["input"]}
    inputs = [Tensor(name, _sendable(arr)) for name, arr in arrays.items()]
    return Prepared(inputs, kind, getattr(data, "index", None) if kind == FRAME else None)


def _sendable(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Object columns (nulls, mixed values) as numbers when they are numbers, so None reaches the server as NaN."""
    if arr.dtype.kind != "O" or all(isinstance(x, (str, bytes)) for x in arr.ravel()):
        return arr
    try:
        return np.array(arr.tolist(), dtype=np.float64)
    except (TypeError, ValueError):
        return arr.astype(str)  # the server names the odd value in its error


def answer(response: InferenceResponse, prepared: Prepared) -> Any:
    """The outputs in the kind the caller sent: DataFrame, records, dict of arrays, or an array."""
    outputs = {t.name: t.data for t in response.outputs}
    if prepared.kind == FRAME:
        import pandas as pd

        return pd.DataFrame({k: v if v.ndim == 1 else list(v) for k, v in outputs.items()}, index=prepared.index)
    if prepared.kind == RECORDS:
        columns = {k: v.tolist() for k, v in outputs.items()}
        rows = len(next(iter(columns.values()), []))
        return [{k: _plain(v[i]) for k, v in columns.items()} for i in range(rows)]
    if prepared.kind == ARRAY and len(outputs) == 1:
        return next(iter(outputs.values()))
    return outputs


def _plain(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def json_body(data: Any) -> dict[str, Any]:
    """The simple API's body for ``data``: rows as ``instances``, a dict of columns as ``inputs``."""
    kind = kind_of(data)
    if kind == FRAME:
        return {"instances": data.to_dict(orient="records")}
    if kind == RECORDS:
        return {"instances": data}
    if kind == COLUMNS:
        return {"inputs": {k: np.asarray(v).tolist() for k, v in data.items()}}
    return {"instances": np.asarray(data).tolist()}
