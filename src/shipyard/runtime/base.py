"""The runtime plug-in interface and the base class for custom Python models.

A *runtime* knows one model format (a "flavor"): how to write a model object
into an artifact folder, how to import a file or folder the user already has,
and how to load that folder back and predict. Runtimes ship as entry points
in the group ``shipyard.runtimes``; third parties add their own the same way.

Predict takes and returns ``dict[str, numpy.ndarray]``: inputs already checked
against the version's signature, outputs named. Nothing here knows transports.

Options: a runtime lists the options ``save``/``import_path`` take in
``option_specs`` (name, type, one-line doc, default). The registry checks every
option against that list before anything is written, so ``save`` and
``import_path`` only ever see declared names with values of the declared type.
A runtime that declares nothing takes nothing: a third-party runtime that read
undeclared ``**options`` must now declare them, or its users get
``unknown option 'x' for runtime NAME; it takes no options`` (loud, rather
than an option silently going nowhere).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shipyard.options import Option, check_options, parse_pairs
from shipyard.signature import Signature

Arrays = dict[str, np.ndarray[Any, Any]]


class Runtime(ABC):
    """One model format. Subclasses are discovered through entry points."""

    flavor: ClassVar[str]
    """Short name stored with each version, e.g. 'sklearn'."""

    extra: ClassVar[str] = ""
    """pip extra that brings this runtime's packages."""

    packages: ClassVar[tuple[str, ...]] = ()
    """Distribution names whose versions are recorded at registration."""

    option_specs: ClassVar[tuple[Option, ...]] = ()
    """The options ``save``/``import_path`` take besides ``trust_pickle``; none unless declared.
    Names must differ from ``register()``'s own keywords (those never reach the runtime)."""

    # -- options -----------------------------------------------------------

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], *, for_file: bool, also: Iterable[str] | Mapping[str, str] = ()
    ) -> dict[str, Any]:
        """``options`` checked against ``option_specs`` (``for_file``: a model file, not an object).

        ``also`` are names valid elsewhere (the caller's own keywords), offered as the nearest
        name when a user mistyped one of them. Raises UnknownOption or InvalidOption.
        """
        return check_options(options, cls.option_specs, owner=f"runtime {cls.flavor}", for_file=for_file, also=also)

    @classmethod
    def parse_options(
        cls, pairs: Iterable[str], *, for_file: bool, also: Iterable[str] | Mapping[str, str] = ()
    ) -> dict[str, Any]:
        """``KEY=VALUE`` texts (``--option``) as typed options, converted by their declared types."""
        return parse_pairs(pairs, cls.option_specs, owner=f"runtime {cls.flavor}", for_file=for_file, also=also)

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        """True if ``save`` can write this in-memory model. Must not import heavy packages
        unless the object's own module is already one of them."""
        return False

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        """Write ``obj`` into the empty folder ``dest``; return flavor metadata (JSON-able)."""
        raise NotImplementedError(f"{cls.flavor} cannot save in-memory objects")

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        """True if ``import_path`` understands this file or folder."""
        return False

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        """Copy or convert the user's file/folder ``src`` into ``dest``; return flavor metadata."""
        raise NotImplementedError(f"{cls.flavor} cannot import files")

    @classmethod
    def default_signature(cls, path: Path, meta: dict[str, Any]) -> Signature | None:
        """A signature the artifact declares itself (ONNX graph, MLmodel), if any."""
        return None

    @classmethod
    def lineage(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """What the version derives from besides its parent, kept in its lineage (a graph: its steps)."""
        return {}

    # -- serving -----------------------------------------------------------

    @classmethod
    @abstractmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> Runtime:
        """Load the artifact folder written by ``save``/``import_path``."""

    @abstractmethod
    def predict(self, inputs: Arrays) -> Arrays:
        """Predict on a batch; every input and output has the batch as first dimension."""

    def unload(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources held by the loaded model."""


class Model:
    """Base class for a custom Python model: subclass it and register an instance.

    shipyard stores the source file of the subclass with the version, calls
    ``save`` to let the model write its own state, and on load imports the
    class, calls ``load`` with the same folder, then per request
    ``preprocess`` -> ``predict`` -> ``postprocess``.

    ``predict`` receives a dict of NumPy arrays (one per input column/tensor)
    and returns an array (output named ``predict``) or a dict of arrays.

    Example:
        class Doubler(shipyard.Model):
            def predict(self, inputs):
                return inputs["x"] * 2
    """

    def save(self, path: Path) -> None:
        """Write whatever state the model needs into the folder ``path``."""

    def load(self, path: Path) -> None:
        """Read the state written by ``save`` back from ``path``."""

    def preprocess(self, inputs: Arrays) -> Any:
        """Turn checked inputs into what ``predict`` wants (identity by default)."""
        return inputs

    def predict(self, inputs: Any) -> Any:
        """Return predictions for a batch."""
        raise NotImplementedError("a shipyard.Model subclass must implement predict()")

    def postprocess(self, outputs: Any) -> Any:
        """Turn predict's result into an array or dict of arrays (identity by default)."""
        return outputs


def as_outputs(result: Any, default_name: str = "predict") -> Arrays:
    """Normalise a model's return value to named arrays with the batch first."""
    if isinstance(result, dict):
        return {str(k): np.asarray(v) for k, v in result.items()}
    if isinstance(result, (tuple, list)) and result and all(hasattr(r, "shape") for r in result):
        return {f"output_{i}": np.asarray(r) for i, r in enumerate(result)}
    mod = type(result).__module__
    if mod.startswith("pandas"):
        if hasattr(result, "columns"):
            return {str(c): result[c].to_numpy() for c in result.columns}
        return {default_name: result.to_numpy()}
    return {default_name: np.asarray(result)}
