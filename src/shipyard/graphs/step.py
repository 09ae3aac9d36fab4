"""``shipyard.Step``: a Python step of an inference graph, registered and versioned like a model."""

from __future__ import annotations

from typing import Any

from shipyard.runtime.base import Arrays, Model


class Step(Model):
    """Base class of a Python graph step: subclass it, implement ``process``, register an instance.

    A step is a custom model (flavor ``python``): its source file and ``save``d state are
    stored with the version and sha256-checked, and its signature comes from the sample it
    is registered with. In a graph it takes what the step before it returned.

    Example:
        class Scale(shipyard.Step):
            def process(self, batch):
                return {k: (v - 5.0) / 2.0 for k, v in batch.items()}

        shipyard.register(Scale(), name="scaler", sample=X[:100])
    """

    def process(self, batch: Arrays) -> Any:
        """Turn a batch (a dict of arrays, one per input) into a batch (a dict of arrays, or one array)."""
        raise NotImplementedError("a shipyard.Step subclass must implement process()")

    def predict(self, inputs: Any) -> Any:
        return self.process(inputs)
