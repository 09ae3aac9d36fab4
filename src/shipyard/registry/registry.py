"""The registry: register, look up, alias and load model versions.

It composes the SQL store (metadata, aliases) and the artifact store (files).
Registration writes the artifact folder first (content-addressed, so a failed
registration leaves nothing that any version points to), then the version row
in one transaction. That row is the commit point.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import math
import shutil
import tempfile
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.config import Settings
from shipyard.errors import IdenticalVersion, InvalidInput, ModelFormatError, RegistryError, ShipyardError
from shipyard.registry import checkset, lineage, reference
from shipyard.registry.artifacts import ArtifactStore, hash_tree
from shipyard.registry.checkset import CheckSet
from shipyard.registry.database import Database
from shipyard.registry.loaded import LoadedModel
from shipyard.registry.model import AliasMove, ModelVersion, manifest_digest
from shipyard.registry.store import RegistryStore, SQLStore
from shipyard.runtime.base import Runtime
from shipyard.runtime.loader import get_runtime, runtime_for
from shipyard.signature import Signature, TensorSpec, head, infer_signature, sample_to_arrays
from shipyard.types import ModelRef, check_extra_fields, check_name

logger = logging.getLogger(__name__)

INPUT_EXAMPLE = "input_example.json"
HOLDOUT = "holdout.npz"
HOLDOUT_MAX_ROWS = 10_000
"""Rows of a holdout set kept at most; above it a seeded random choice is kept, in order."""
HOLDOUT_SEED = 0
IF_IDENTICAL = ("refuse", "reuse", "new")


class Registry:
    """Versioned models with aliases. Build with ``Registry.from_settings()``.

    Args:
        store: the metadata store.
        artifacts: the artifact files.
        database: the SQL database other components keep their tables in (asynchronous jobs);
            defaults to an ``SQLStore``'s own.
    """

    def __init__(self, store: RegistryStore, artifacts: ArtifactStore, database: Database | None = None) -> None:
        self.store = store
        self.artifacts = artifacts
        if database is None and isinstance(store, SQLStore):
            database = store.database
        self._database = database

    @property
    def database(self) -> Database:
        """The SQL database beside the registry, for tables of other components."""
        if self._database is None:
            raise RuntimeError("this registry was built without a SQL database")
        return self._database

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Registry:
        """Open the configured registry, upgrading its database schema if it is older than this shipyard."""
        s = settings or Settings.from_env()
        if not s.registry_url or not s.artifacts:
            s.home.mkdir(parents=True, exist_ok=True)
        artifacts = ArtifactStore(s.resolved_artifacts, s.cache_dir, s.security.model_url_hosts)
        database = Database(s.resolved_registry_url)
        return cls(SQLStore(database), artifacts, database)

    def close(self) -> None:
        self.store.close()

    # -- registration -----------------------------------------------------------

    def register(
        self,
        model: Any,
        name: str,
        *,
        sample: Any = None,
        flavor: str | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        training_data: Any = None,
        parent: str | None = None,
        trust_pickle: bool = False,
        alias: str | None = None,
        extra_fields: str = "refuse",
        check_data: Any = None,
        if_identical: str = "refuse",
        holdout: tuple[Any, Any] | None = None,
        retraining: dict[str, Any] | None = None,
        **options: Any,
    ) -> ModelVersion:
        """Store a model object, or a file/folder path, as the next version of ``name``.

        Args:
            model: an in-memory model or a path to a model file/folder.
            name: the model's name; versions are numbered from 1.
            sample: rows of real input (DataFrame, records, dict of arrays, array);
                the signature is inferred from it, and up to 1,000 rows are kept as the
                version's check set unless ``check_data`` is given. Optional when the format carries
                its own signature (ONNX, MLflow with a signature).
            flavor: force a runtime instead of guessing from the object or file.
            description, tags, metrics: free metadata kept with the version.
            training_data: the training set; only its sha256 fingerprint is stored.
            parent: the version this one derives from, e.g. ``"fraud:3"``.
            trust_pickle: allow pickle/joblib input, which can run arbitrary code.
            alias: also point this alias at the new version.
            extra_fields: what record requests (``/v1`` predict, GraphQL, streams) do with
                fields beside the inputs, such as ids: ``refuse`` them (400 or dead letter),
                ``ignore`` them, or ``passthrough`` (return them beside each prediction).
                Stored with the signature; a server or stream may override it.
            check_data: rows to keep as the version's check set instead of the sample's
                (same forms as ``sample``; up to 1,000 are kept). Every equivalence check
                (export, bundle, ONNX serving, static-quantization calibration) runs on them.
            if_identical: what to do when these exact files (same digest, flavor and runtime
                options) already are a version of ``name``: ``refuse`` (raise
                ``IdenticalVersion``), ``reuse`` (return that version, still moving ``alias``)
                or ``new`` (register a copy). Tags, metrics and description do not count.
            holdout: labelled rows ``(inputs, labels)`` the promotion gates score this version
                and the version it would replace on (``shipyard.rollout.gates``): inputs in the
                same forms as ``sample``, labels one per row. Up to ``HOLDOUT_MAX_ROWS`` rows are
                kept in the version folder, covered by the digest like the check set.
            retraining: where a retrained version came from (``shipyard.retraining``: the run, its
                data window, row count and fingerprint, the training code's digest and reference),
                kept under ``lineage.retraining``.
            **options: the runtime's own options, e.g. ``methods=["predict_proba"]`` for
                scikit-learn (each runtime's ``option_specs`` lists them). An unknown name or
                a value of the wrong type is refused before anything is written.

        Returns:
            The stored, immutable version.

        Raises:
            UnknownOption: an option the runtime does not take (it names the nearest one).
            InvalidOption: an option's value has the wrong type.
        """
        check_name("model name", name)
        if alias is not None:
            # before anything is written: a bad alias must not leave a version behind
            _check_alias(alias)
        check_extra_fields(extra_fields)
        _check_choice("if_identical", if_identical, IF_IDENTICAL)
        checked_metrics = _check_metrics(metrics or {})
        resolve_in = getattr(model, "resolve_in", None)
        if callable(resolve_in):  # made of other versions (an inference graph): pin them, check they fit
            model = resolve_in(self)
        path = _model_path(model)
        runtime_cls = runtime_for(path if path is not None else model, flavor)
        options = runtime_cls.check_options(options, for_file=path is not None, also=register_keywords())
        parent_ref = None
        if parent is not None:
            p = self.get(parent)
            parent_ref = p.ref
        with tempfile.TemporaryDirectory(prefix="shipyard-register-") as tmp:
            work = Path(tmp) / "model"
            work.mkdir()
            meta = self._write_artifact(runtime_cls, model, path, work, trust_pickle, options)
            signature = self._signature(runtime_cls, work, meta, sample).with_extra_fields(extra_fields)
            if sample is not None:
                arrays, _ = sample_to_arrays(sample)
                (work / INPUT_EXAMPLE).write_bytes(json.dumps(head(arrays), default=_json_default).encode())
            check_info = _write_check_set(work, signature, sample, check_data)
            if holdout is not None:
                _write_holdout(work, signature, holdout)
            _write_profile(runtime_cls, work, meta, signature, [("training_data", training_data), ("sample", sample)])
            files = hash_tree(work)
            digest = manifest_digest(files)
            uri = self.artifacts.put(work, name, digest)
        record = {
            "name": name,
            "flavor": runtime_cls.flavor,
            "digest": digest,
            "files": files,
            "signature": signature.to_dict(),
            "flavor_meta": meta,
            "description": description,
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            "metrics": checked_metrics,
            "lineage": {**_lineage(training_data, parent_ref, None if path is None else str(path.resolve())),
                        **runtime_cls.lineage(meta),
                        **({"retraining": retraining} if retraining else {})},
            "packages": lineage.package_versions(runtime_cls.packages),
            "artifact_uri": uri,
            "check_set": check_info,
        }
        try:
            mv = self.store.add_version(record, allow_identical=if_identical == "new")
        except IdenticalVersion as exc:
            if if_identical != "reuse":
                raise
            mv = self.store.get_version(name, exc.version)
            logger.info("%s holds these exact files already; reusing it", mv.ref)
        else:
            logger.info("registered %s (%s, digest %s)", mv.ref, mv.flavor, digest[:12])
        if alias is not None and self.store.aliases(name).get(alias) != mv.version:
            self.set_alias(name, alias, mv.version)
        return mv

    def _write_artifact(
        self, cls: type[Runtime], model: Any, path: Path | None, work: Path, trust_pickle: bool,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        if path is not None:
            return cls.import_path(path, work, trust_pickle=trust_pickle, **options)
        return cls.save(model, work, trust_pickle=trust_pickle, **options)

    def _signature(self, cls: type[Runtime], work: Path, meta: dict[str, Any], sample: Any) -> Signature:
        declared = cls.default_signature(work, meta)
        if sample is None:
            if declared is None:
                raise ModelFormatError(
                    "a sample is needed to infer the signature of this model: pass sample= "
                    "(--sample FILE) with a few rows of real input"
                )
            return declared
        sig = infer_signature(sample)
        arrays, _ = sample_to_arrays(sample)
        if declared is not None:
            if sig.format == "tensors" and len(declared.inputs) == len(arrays) == 1:
                # an unnamed array sample for a model whose single input has its own name
                arrays = {declared.inputs[0].name: next(iter(arrays.values()))}
                sig = infer_signature(arrays)
            # The artifact knows its own dtypes and shapes (an ONNX graph wants FP32 even when
            # the sample is FP64); the sample only adds whether NaN is allowed.
            own = {s.name: s for s in declared.inputs}
            sig = Signature(
                inputs=tuple(
                    TensorSpec(s.name, own[s.name].datatype, own[s.name].shape, s.allow_nan) if s.name in own else s
                    for s in sig.inputs
                ),
                format=declared.format if set(own) == {s.name for s in sig.inputs} else sig.format,
            )
        runtime = cls.load(work, meta)
        try:
            outputs = runtime.predict(sig.validate(arrays))
        except ShipyardError:
            raise
        except Exception as exc:
            raise ModelFormatError(
                f"the model failed on the sample, so no signature could be inferred: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            runtime.unload()
        return sig.with_outputs(outputs)

    # -- lookup -------------------------------------------------------------------

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """The version a reference means: ``name`` (newest), ``name@alias`` or ``name:N``."""
        r = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if r.alias is not None:
            return self.store.get_version(r.name, self.store.resolve_alias(r.name, r.alias))
        if r.version is not None:
            return self.store.get_version(r.name, r.version)
        return self.store.latest_version(r.name)

    def resolve(self, ref: str | ModelRef) -> int:
        """Just the version number a reference points to (cheap: no record decoding)."""
        r = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if r.alias is not None:
            return self.store.resolve_alias(r.name, r.alias)
        if r.version is not None:
            # check it exists: "name:99" must fail here as it does in get() and load()
            return self.store.get_version(r.name, r.version).version
        return self.store.latest_version(r.name).version

    def models(self) -> list[dict[str, Any]]:
        return self.store.list_models()

    def versions(self, name: str) -> list[ModelVersion]:
        return self.store.list_versions(name)

    def aliases(self, name: str) -> dict[str, int]:
        return self.store.aliases(name)

    # -- aliases ------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, actor: str | None = None,
                  note: str | None = None) -> AliasMove:
        """Point ``alias`` at ``version``; ``actor`` (who did it) and ``note`` (why) are kept in its history."""
        _check_alias(alias)
        return self.store.set_alias(name, alias, version, actor=actor, note=note)

    def delete_alias(self, name: str, alias: str, actor: str | None = None) -> AliasMove:
        return self.store.delete_alias(name, alias, actor=actor)

    def rollback(self, name: str, alias: str = "champion", actor: str | None = None) -> AliasMove:
        return self.store.rollback_alias(name, alias, actor=actor)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        return self.store.alias_history(name, alias)

    # -- loading ------------------------------------------------------------------

    def fetch(self, mv: ModelVersion) -> Path:
        """A local folder with the version's verified files."""
        return self.artifacts.fetch(mv.name, mv.version, mv.digest, mv.files)

    def load(self, ref: str | ModelRef | ModelVersion) -> LoadedModel:
        """Load a version into memory after checking every file's sha256."""
        mv = ref if isinstance(ref, ModelVersion) else self.get(ref)
        folder = self.fetch(mv)
        runtime = get_runtime(mv.flavor).load(folder, mv.flavor_meta)
        return LoadedModel(mv, runtime)

    def check_set(self, mv: ModelVersion) -> CheckSet | None:
        """The rows equivalence checks of ``mv`` run on, validated by its signature.

        Versions registered before check sets were kept fall back to their input
        example, with a note saying so; None when the version has neither.
        """
        if mv.check_set.get("file") in mv.files:
            return checkset.read(self.fetch(mv), mv.signature, mv.check_set, mv.ref)
        raw = self.input_example(mv)
        if raw is None:
            return None
        inputs = mv.signature.validate(checkset.named(mv.signature, {k: np.asarray(v) for k, v in raw.items()}))
        rows = checkset.rows_of(inputs)
        note = None
        if rows < checkset.MIN_ROWS:
            note = (f"{mv.ref} predates check sets and keeps only its {rows}-row input example; "
                    "re-register it with a larger sample or check_data")
        return CheckSet(inputs, note)

    def holdout(self, mv: ModelVersion) -> tuple[dict[str, np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None:
        """The labelled holdout rows registered with ``mv``: (inputs validated by its signature,
        labels); None when it was registered without one."""
        if HOLDOUT not in mv.files:
            return None
        path = self.fetch(mv) / HOLDOUT
        try:
            stored = checkset.decode(_holdout_signature(mv.signature), path.read_bytes())
            labels = stored.pop(_LABEL)
            inputs = mv.signature.validate(stored)
        except (OSError, ValueError, zipfile.BadZipFile, InvalidInput) as exc:
            # the sha256 matched, so the file is as registered: a reader/writer mismatch
            raise RegistryError(f"the holdout set of {mv.ref} ('{HOLDOUT}') cannot be read: {exc}") from exc
        return inputs, labels

    def profile(self, mv: ModelVersion) -> Any:
        """The reference profile registered with ``mv`` (a ``monitoring.drift.profile.Profile``), or None."""
        if reference.PROFILE not in mv.files:
            return None
        found = reference.read(self.fetch(mv))
        return None if found is None else found[0]

    def reprofile(self, ref: str | ModelRef, data: Any, *, alias: str | None = None,
                  actor: str | None = None) -> ModelVersion:
        """A new version of ``ref`` with the same files and a reference profile made from ``data``.

        Versions are immutable, so the new reference makes a new version (its parent
        is ``ref``'s version; tags, metrics, description and runtime settings carry
        over). ``data`` takes the forms of ``register``'s ``sample``.

        Raises:
            InvalidInput: ``data`` does not fit the signature or has fewer than
                ``reference.MIN_ROWS`` rows.
        """
        mv = self.get(ref)
        rows = reference.reference_rows(mv.signature, [("data", data)])
        if rows is None:
            raise InvalidInput(f"the data gives no reference profile for {mv.ref}: it needs at least "
                               f"{reference.MIN_ROWS} rows that fit the signature", field="data")
        if alias is not None:
            _check_alias(alias)
        with tempfile.TemporaryDirectory(prefix="shipyard-profile-") as tmp:
            work = Path(tmp) / "model"
            shutil.copytree(self.fetch(mv), work)
            loaded = get_runtime(mv.flavor).load(work, mv.flavor_meta)
            try:
                reference.write(work, reference.build(loaded, *rows))
            finally:
                loaded.unload()
            files = hash_tree(work)
            digest = manifest_digest(files)
            uri = self.artifacts.put(work, mv.name, digest)
        record = {
            "name": mv.name, "flavor": mv.flavor, "digest": digest, "files": files,
            "signature": mv.signature.to_dict(), "flavor_meta": mv.flavor_meta, "description": mv.description,
            "tags": dict(mv.tags), "metrics": dict(mv.metrics),
            "lineage": {**mv.lineage, "parent": mv.ref}, "packages": mv.packages, "artifact_uri": uri,
            "check_set": mv.check_set,
        }
        new = self.store.add_version(record)
        logger.info("registered %s: %s with a reference profile of %s rows", new.ref, mv.ref, rows[1])
        if alias is not None:
            self.set_alias(mv.name, alias, new.version, actor=actor, note=f"reference profile from {mv.ref}")
        return new

    def input_example(self, mv: ModelVersion) -> dict[str, list[Any]] | None:
        """The first rows of the registration sample, if one was given."""
        if INPUT_EXAMPLE not in mv.files:
            return None
        folder = self.fetch(mv)
        data: dict[str, list[Any]] = json.loads((folder / INPUT_EXAMPLE).read_text())
        return data


@cache
def register_keywords() -> tuple[str, ...]:
    """``register()``'s own keyword names, read from its signature: a mistyped one (``trust``)
    lands in ``**options``, and the nearest-name hint must be able to point back at it."""
    params = inspect.signature(Registry.register).parameters.values()
    return tuple(p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def _model_path(model: Any) -> Path | None:
    """The model's file or folder when ``model`` is a path (which must exist), else None."""
    if not isinstance(model, (str, Path)):
        return None
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelFormatError(f"model path '{path}' does not exist")
    return path


def _write_profile(cls: type[Runtime], work: Path, meta: dict[str, Any], signature: Signature,
                   candidates: list[tuple[str, Any]]) -> None:
    """Keep the reference profile in the version folder (before hashing) when some data makes one."""
    rows = reference.reference_rows(signature, candidates)
    if rows is None:
        return
    runtime = cls.load(work, meta)
    try:
        document = reference.build(runtime, *rows)
    except ShipyardError:
        raise
    except Exception as exc:  # the model ran on the sample already; a failure here is on the larger data
        raise ModelFormatError(f"the model failed on the {rows[1].replace('_', ' ')} while profiling it: "
                               f"{type(exc).__name__}: {exc}") from exc
    finally:
        runtime.unload()
    reference.write(work, document)


def _write_check_set(work: Path, signature: Signature, sample: Any, check_data: Any) -> dict[str, Any]:
    """Keep the check set in the version folder (before hashing); its record, or {} without rows."""
    data = check_data if check_data is not None else sample
    if data is None:
        return {}
    source = "check_data" if check_data is not None else "sample"
    arrays, _ = sample_to_arrays(data)
    try:
        valid = signature.validate(checkset.named(signature, arrays))
    except InvalidInput as exc:
        if check_data is None:
            raise
        raise InvalidInput(f"check_data does not fit the signature: {exc}", field="check_data",
                           expected=exc.expected, got=exc.got) from None
    kept, info = checkset.choose(valid, source)
    checkset.write(work, signature, kept)
    return info


# The holdout file is a check-set file (``checkset.encode``) whose last entry holds the labels.
_LABEL = "\0label"


def _holdout_signature(signature: Signature, labels: np.ndarray[Any, Any] | None = None) -> Signature:
    """The signature's inputs plus one for the labels (its datatype only decides how it is encoded)."""
    text = labels is not None and labels.dtype.kind in ("O", "U", "S")
    label = TensorSpec(_LABEL, "BYTES" if text else "FP64", (-1,))
    return Signature(inputs=(*signature.inputs, label), format="tensors")


def _write_holdout(work: Path, signature: Signature, holdout: tuple[Any, Any]) -> None:
    """Keep the labelled holdout rows in the version folder (before hashing), validated by the signature."""
    try:
        data, labels = holdout
    except (TypeError, ValueError):
        raise InvalidInput("holdout must be a pair (inputs, labels)", field="holdout") from None
    arrays, _ = sample_to_arrays(data)
    try:
        valid = signature.validate(checkset.named(signature, arrays))
    except InvalidInput as exc:
        raise InvalidInput(f"the holdout inputs do not fit the signature: {exc}", field="holdout",
                           expected=exc.expected, got=exc.got) from None
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    rows = checkset.rows_of(valid)
    if y.ndim != 1 or len(y) != rows:
        raise InvalidInput(f"the holdout needs one label per row: {rows} rows of inputs, labels of shape "
                           f"{list(y.shape)}", field="holdout", expected=rows, got=list(y.shape))
    if y.dtype.kind == "U":
        y = y.astype(object)
    if rows > HOLDOUT_MAX_ROWS:
        keep = np.sort(np.random.default_rng(HOLDOUT_SEED).choice(rows, size=HOLDOUT_MAX_ROWS, replace=False))
        valid = {k: v[keep] for k, v in valid.items()}
        y = y[keep]
        logger.info("the holdout has %d rows; keeping %d chosen at random (seed %d)", rows, HOLDOUT_MAX_ROWS,
                    HOLDOUT_SEED)
    try:
        encoded = checkset.encode(_holdout_signature(signature, y), {**valid, _LABEL: y})
    except InvalidInput:
        raise InvalidInput("the holdout labels must all be numbers or all be strings", field="holdout") from None
    (work / HOLDOUT).write_bytes(encoded)


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value in choices:
        return
    near = difflib.get_close_matches(str(value), choices, n=1)
    raise InvalidInput(
        f"{option} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        + (f"; did you mean {near[0]!r}?" if near else ""),
        field=option, expected=list(choices), got=value,
    )


def _check_alias(alias: str) -> None:
    check_name("alias", alias)
    if alias.isdigit():
        raise InvalidInput(
            f"alias '{alias}' is a number; aliases must not look like versions", field="alias", got=alias
        )


def _check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Finite floats only: the same record must store on SQLite and PostgreSQL, whose JSON
    type rejects NaN and infinity."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidInput(f"metric '{k}' must be a number, got {v!r}", field="metrics", got=v) from None
        if not math.isfinite(f):
            raise InvalidInput(
                f"metric '{k}' is {f}; metrics must be finite numbers", field="metrics", got=v
            )
        out[str(k)] = f
    return out


def _lineage(training_data: Any, parent: str | None, source: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if training_data is not None:
        out["training_data"] = lineage.data_fingerprint(training_data)
    git = lineage.git_commit()
    if git is not None:
        out["git"] = git
    if parent is not None:
        out["parent"] = parent
    if source is not None:
        out["source"] = source
    return out


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode(errors="replace")
    raise TypeError(f"cannot store {type(x).__name__} in the input example")

