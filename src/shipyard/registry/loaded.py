"""A registered version loaded into memory: signature check plus the runtime's predict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InferenceError, InvalidInput, ShipyardError
from shipyard.registry.model import ModelVersion
from shipyard.runtime.base import Arrays, Runtime
from shipyard.signature import Signature, sample_to_arrays


@dataclass
class LoadedModel:
    """What ``shipyard.load`` returns and what servers keep per version."""

    version: ModelVersion
    runtime: Runtime

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def signature(self) -> Signature:
        return self.version.signature

    def predict_arrays(self, inputs: Arrays, outputs: list[str] | None = None) -> Arrays:
        """Validate named arrays against the signature, predict, return named outputs."""
        if outputs:
            self.check_outputs(outputs)
        return select_outputs(self.run(self.signature.validate(inputs)), outputs)

    def run(self, checked: Arrays) -> Arrays:
        """Predict on inputs that already passed the signature; model errors become InferenceError."""
        try:
            return self.runtime.predict(checked)
        except ShipyardError:
            raise
        except Exception as exc:
            raise InferenceError(
                f"model {self.version.ref} failed while predicting: {type(exc).__name__}: {exc}"
            ) from exc

    def check_outputs(self, outputs: list[str]) -> None:
        """Refuse output names the signature does not have (before any model time is spent)."""
        known = [s.name for s in self.signature.outputs]
        if not known:
            return
        unknown = [o for o in outputs if o not in known]
        if unknown:
            raise InvalidInput(
                f"unknown output '{unknown[0]}'; this model returns {', '.join(known)}",
                field=unknown[0],
                expected=known,
                got=unknown[0],
            )

    def predict(self, data: Any) -> Any:
        """Predict from a DataFrame, records, a dict of columns or an array.

        Returns an array when the model has one output, otherwise a dict of arrays;
        a DataFrame in gives a DataFrame out. Columns beside the inputs follow the
        signature's ``extra_fields``; ``passthrough`` drops them as ``ignore`` does (the
        caller holds its rows, and a DataFrame's index lines the results up with them).
        """
        arrays, _ = sample_to_arrays(data)
        if self.signature.format == "tensors" and list(arrays) == ["input"] and len(self.signature.inputs) == 1:
            arrays = {self.signature.inputs[0].name: arrays["input"]}
        arrays = self.signature.split_extra(arrays)[0]
        result = self.predict_arrays(arrays)
        if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
            import pandas as pd

            return pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in result.items()}, index=data.index)
        if len(result) == 1:
            return next(iter(result.values()))
        return result

    def close(self) -> None:
        self.runtime.unload()


def select_outputs(result: Arrays, outputs: list[str] | None) -> Arrays:
    """Keep only the requested outputs (all when none are named)."""
    if not outputs:
        return result
    missing = [o for o in outputs if o not in result]
    if missing:
        raise InvalidInput(
            f"unknown output '{missing[0]}'; this model returns {', '.join(result)}",
            field=missing[0],
            expected=list(result),
            got=missing[0],
        )
    return {o: result[o] for o in outputs}


def to_list(arr: np.ndarray[Any, Any]) -> list[Any]:
    if arr.dtype.kind == "O":
        return [x.decode() if isinstance(x, bytes) else x for x in arr.tolist()]
    return arr.tolist()  # type: ignore[no-any-return]
