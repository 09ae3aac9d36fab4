"""Convert a registered version to an ONNX graph that takes and returns what the source does.

One converter per framework:

* scikit-learn estimators and Pipelines (also MLflow sklearn folders): ``skl2onnx``;
* XGBoost and LightGBM: ``onnxmltools``;
* PyTorch: ``torch.onnx`` (exported programs through the dynamo exporter,
  TorchScript through the TorchScript exporter, its only route);
* TensorFlow (SavedModels, Keras): ``tf2onnx``, from the serving signature;
* ONNX versions are already graphs and are used as they are.

Custom ``shipyard.Model`` subclasses and MLflow ``python_function`` models run
arbitrary Python in ``predict``; there is no graph to convert, and
``NotExportable`` says so.

The graph is made to fit the source's signature, so the exported model can be
registered and served in its place: one graph input per source input, with
the same name (a table's columns are 1-D ``[N]`` inputs, joined into the
feature matrix inside the graph); outputs named like the source's (``predict``
for labels or values, ``predict_proba`` for class probabilities, the
signature's names for PyTorch); a LightGBM classifier's class indices mapped
back to its own labels; a free batch dimension on every output.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import NotExportable
from shipyard.registry.loaded import LoadedModel
from shipyard.signature import Signature

logger = logging.getLogger(__name__)

EXTRA = "export"
#: Highest opset each converter writes by default (onnxmltools stops at 15).
DEFAULT_OPSET = {"sklearn": 17, "mlflow": 17, "xgboost": 15, "lightgbm": 15, "torch": 18, "tensorflow": 17}
FEATURES = "__shipyard_features"
_FLOAT_TYPES = ("FP16", "FP32", "FP64")
_INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


@dataclass
class Source:
    """What a conversion starts from: the framework object and the version's signature."""

    flavor: str
    model: Any
    """scikit-learn estimator, XGBoost model, LightGBM Booster, torch ExportedProgram or
    ScriptModule, or the path of an ONNX file, a SavedModel folder or a TFLite file."""
    signature: Signature
    classes: np.ndarray[Any, Any] | None = None
    """LightGBM classifiers: the labels behind the class indices."""
    label_output: str = "predict"
    signature_key: str = "serving_default"
    """TensorFlow: the SavedModel signature the version serves."""


def open_source(loaded: LoadedModel, folder: Path) -> Source:
    """The framework object behind a loaded version, ready to convert.

    Args:
        loaded: the version loaded through the registry (files verified).
        folder: the version's verified artifact folder.

    Raises:
        NotExportable: the version's format has no ONNX converter.
    """
    mv = loaded.version
    runtime: Any = loaded.runtime
    sig = mv.signature
    label = sig.outputs[0].name if sig.outputs else "predict"
    if mv.flavor == "sklearn":
        return Source("sklearn", runtime.model, sig, label_output=label)
    if mv.flavor == "mlflow" and getattr(runtime, "loader", None) == "sklearn":
        return Source("sklearn", runtime.predictor.model, sig, label_output=label)
    if mv.flavor == "xgboost":
        return Source("xgboost", runtime.model, sig, label_output=label)
    if mv.flavor == "lightgbm":
        return Source("lightgbm", runtime.booster, sig, classes=runtime.classes, label_output=label)
    if mv.flavor == "onnx":
        return Source("onnx", folder / mv.flavor_meta["file"], sig, label_output=label)
    if mv.flavor == "torch":
        file = folder / mv.flavor_meta["file"]
        if mv.flavor_meta.get("kind") == "export":
            torch = require("torch", "torch")
            return Source("torch", torch.export.load(str(file)), sig, label_output=label)
        # A copy of its own: the exporter traces the module, and the loaded one keeps serving the check.
        module = require("torch", "torch").jit.load(str(file), map_location="cpu")
        module.eval()
        return Source("torch", module, sig, label_output=label)
    if mv.flavor == "tensorflow" or (mv.flavor == "mlflow" and mv.flavor_meta.get("loader") == "tensorflow"):
        meta = mv.flavor_meta if mv.flavor == "tensorflow" else mv.flavor_meta["tensorflow"]
        return Source("tensorflow", folder / meta["dir"], sig, label_output=label,
                      signature_key=meta.get("signature", "serving_default"))
    if mv.flavor == "tflite":
        return Source("tflite", folder / mv.flavor_meta["file"], sig, label_output=label,
                      signature_key=mv.flavor_meta.get("signature", "serving_default"))
    if mv.flavor == "python":
        raise NotExportable(
            f"{mv.ref} is a custom shipyard.Model ({mv.flavor_meta.get('class', 'Python class')}): its predict() "
            "is arbitrary Python, and ONNX can only hold a graph of tensor operations, so there is nothing "
            "to convert. Build the model in a framework with an ONNX converter (scikit-learn, XGBoost, "
            "LightGBM, PyTorch) or write the ONNX graph yourself and register that"
        )
    if mv.flavor == "mlflow":
        raise NotExportable(
            f"{mv.ref} is an MLflow python_function model: its predict() is arbitrary Python (cloudpickle), "
            "so there is no graph to convert. Register the underlying framework model instead"
        )
    raise NotExportable(f"{mv.ref} has flavor '{mv.flavor}', which has no ONNX converter in shipyard")


def convert(source: Source, *, opset: int | None = None, example: dict[str, np.ndarray[Any, Any]] | None = None,
            model: Any = None) -> Any:
    """Convert ``source`` (or ``model``, a changed copy of it such as a pruned one) to an ONNX ModelProto.

    Args:
        source: from ``open_source``.
        opset: the ONNX opset to target; the converter's default when None.
        example: a few rows of checked input, needed to trace PyTorch models.
        model: convert this framework object instead of ``source.model`` (same kind).
    """
    onnx = require("onnx", EXTRA)
    obj = source.model if model is None else model
    target = opset or DEFAULT_OPSET.get(source.flavor)
    if source.flavor == "onnx":
        return onnx.load_model(str(obj))
    if source.flavor == "torch":
        if example is None:
            raise NotExportable("a PyTorch model needs example input to export: register it with a sample")
        proto = _torch(obj, source.signature, example, target or 18)
        return _finish(proto, source.signature, outputs={})
    if source.flavor == "sklearn":
        return _sklearn(obj, source, target or 17)
    if source.flavor == "tensorflow":
        return _finish(_tensorflow(obj, source.signature_key, target or 17), source.signature, outputs={})
    if source.flavor == "tflite":
        raise NotExportable(
            "a TFLite model has no maintained converter to ONNX; export its TensorFlow source with --to onnx instead"
        )
    if source.flavor in ("xgboost", "lightgbm"):
        return _gbm(obj, source, target or 15)
    raise NotExportable(f"no ONNX converter for flavor '{source.flavor}'")  # pragma: no cover - open_source guards


# -- scikit-learn ---------------------------------------------------------------------


def _sklearn(model: Any, source: Source, opset: int) -> Any:
    skl2onnx = require("skl2onnx", EXTRA)
    types = require("skl2onnx.common.data_types", EXTRA, "skl2onnx")
    sig = source.signature
    per_column = _has_column_transformer(model)
    if per_column:
        if sig.format != "columns":
            raise NotExportable("a ColumnTransformer pipeline needs named columns; register it with a DataFrame sample")
        initial = [(s.name, _skl_type(types, s.datatype, [None, 1])) for s in sig.inputs]
    else:
        initial = [(FEATURES, types.FloatTensorType([None, _width(sig)]))]
    options = {id(model): {"zipmap": False}} if _is_classifier(model) else None
    try:
        with _quiet():
            proto = skl2onnx.convert_sklearn(model, initial_types=initial, options=options, target_opset=opset)
    except Exception as exc:  # skl2onnx raises many types for unsupported estimators
        raise NotExportable(f"skl2onnx cannot convert {type(model).__name__}: {exc}") from exc
    return _finish(proto, sig, outputs=_standard_outputs(proto, source), per_column=per_column)


def _has_column_transformer(model: Any) -> bool:
    compose = require("sklearn.compose", "sklearn", "scikit-learn")
    pipeline = require("sklearn.pipeline", "sklearn", "scikit-learn")
    if isinstance(model, compose.ColumnTransformer):
        return True
    if isinstance(model, pipeline.Pipeline):
        return any(_has_column_transformer(step) for _, step in model.steps)
    return False


def _is_classifier(model: Any) -> bool:
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return hasattr(final, "classes_") or hasattr(final, "predict_proba")


def _skl_type(types: Any, datatype: str, shape: list[int | None]) -> Any:
    if datatype == "BYTES":
        return types.StringTensorType(shape)
    if datatype in _INT_TYPES:
        return types.Int64TensorType(shape)
    if datatype == "BOOL":
        return types.BooleanTensorType(shape)
    return types.FloatTensorType(shape)


def _width(sig: Signature) -> int:
    """Number of features the single matrix input carries."""
    if sig.format == "columns" or all(len(s.shape) == 1 for s in sig.inputs):
        bad = [s for s in sig.inputs if s.datatype not in _FLOAT_TYPES + _INT_TYPES + ("BOOL",)]
        if bad:
            raise NotExportable(
                f"input '{bad[0].name}' is {bad[0].datatype}: a model without an encoder step "
                "(ColumnTransformer, OneHotEncoder) only takes numbers in ONNX"
            )
        return len(sig.inputs)
    if len(sig.inputs) != 1 or len(sig.inputs[0].shape) != 2 or sig.inputs[0].shape[1] < 1:
        raise NotExportable(
            "this model takes "
            + ", ".join(s.describe() for s in sig.inputs)
            + "; ONNX export needs named columns or one [N, features] matrix"
        )
    return sig.inputs[0].shape[1]


# -- XGBoost, LightGBM ----------------------------------------------------------------


def _gbm(model: Any, source: Source, opset: int) -> Any:
    onnxmltools = require("onnxmltools", EXTRA)
    types = require("onnxmltools.convert.common.data_types", EXTRA, "onnxmltools")
    initial = [(FEATURES, types.FloatTensorType([None, _width(source.signature)]))]
    try:
        with _quiet():
            if source.flavor == "xgboost":
                proto = onnxmltools.convert_xgboost(_xgb_plain_names(model), initial_types=initial,
                                                    target_opset=opset)
            else:
                proto = onnxmltools.convert_lightgbm(model, initial_types=initial, target_opset=opset, zipmap=False)
    except Exception as exc:  # the converters raise RuntimeError/ValueError/... per unsupported case
        raise NotExportable(f"onnxmltools cannot convert this {source.flavor} model: {exc}") from exc
    return _finish(proto, source.signature, outputs=_standard_outputs(proto, source), classes=source.classes)


def _xgb_plain_names(model: Any) -> Any:
    """onnxmltools reads features by position ('f0', 'f1', ...): drop the names on a copy."""
    xgb = require("xgboost", "xgboost")
    raw = model.get_booster().save_raw("ubj") if hasattr(model, "get_booster") else model.save_raw("ubj")
    if isinstance(model, xgb.XGBModel):
        copy = type(model)()
        copy.load_model(bytearray(raw))
        copy.get_booster().feature_names = None
        return copy
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    booster.feature_names = None
    return booster


def _standard_outputs(proto: Any, source: Source) -> dict[str, str]:
    """Converter output names -> the names the source's runtime uses."""
    names = [o.name for o in proto.graph.output]
    if len(names) == 2:  # classifiers: label, probabilities
        return {names[0]: source.label_output, names[1]: "predict_proba"}
    if len(names) == 1:
        return {names[0]: source.label_output}
    return {}


# -- PyTorch ----------------------------------------------------------------------------


def _torch(model: Any, sig: Signature, example: dict[str, np.ndarray[Any, Any]], opset: int) -> Any:
    torch = require("torch", "torch")
    require("onnxscript", EXTRA)  # the exporter needs it; say so before torch fails deep inside
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[s.name])) for s in sig.inputs)
    input_names = [s.name for s in sig.inputs]
    output_names = [s.name for s in sig.outputs] or None
    try:
        with _quiet():
            if isinstance(model, torch.jit.ScriptModule):
                # The dynamo exporter refuses ScriptModules; the TorchScript exporter is their only route.
                import io

                buf = io.BytesIO()
                axes = {n: {0: "batch"} for n in input_names + (output_names or [])}
                torch.onnx.export(model, args, buf, input_names=input_names, output_names=output_names,
                                  dynamic_axes=axes, opset_version=opset, dynamo=False)
                return require("onnx", EXTRA).load_model_from_string(buf.getvalue())
            program = model
            if not isinstance(model, torch.export.ExportedProgram):
                batch = torch.export.Dim("batch")
                program = torch.export.export(model, args, dynamic_shapes=tuple({0: batch} for _ in args))
            onnx_program = torch.onnx.export(program, args, input_names=input_names, output_names=output_names,
                                             opset_version=opset, dynamo=True, verbose=False)
            return onnx_program.model_proto
    except Exception as exc:  # torch.onnx raises its own error types per failing step
        raise NotExportable(f"torch.onnx cannot export this model: {type(exc).__name__}: {exc}") from exc


def _tensorflow(saved_model: Path, signature: str, opset: int) -> Any:
    """The SavedModel's ``signature`` through tf2onnx, with the signature's input and output names.

    tf2onnx's own SavedModel loader (what its command line uses) freezes every variable and
    captured constant the signature reads, and names the graph's tensors after the signature.
    """
    from shipyard.runtime.tensorflow import import_tensorflow

    import_tensorflow()
    tf2onnx = require("tf2onnx", "tensorflow")
    loader = require("tf2onnx.tf_loader", "tensorflow", "tf2onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TensorFlow's deprecation notes from inside tf2onnx
            graph_def, inputs, outputs, rename = loader.from_saved_model(
                str(saved_model), None, None, tag="serve", signatures=[signature], return_tensors_to_rename=True)
            proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                                      opset=opset, tensors_to_rename=rename)
    except Exception as exc:  # tf2onnx raises assorted errors for operators it cannot map
        raise NotExportable(f"tf2onnx cannot convert this SavedModel: {type(exc).__name__}: {exc}") from exc
    onnx = require("onnx", EXTRA)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        # tf2onnx leaves TensorFlow operators it has no mapping for in the graph
        ops = sorted({n.op_type for n in proto.graph.node if n.domain == "" and not onnx.defs.has(n.op_type)})
        hint = (" (a function compiled with XLA is kept whole and cannot be converted: export the "
                "version it was compiled from)") if {"StatefulPartitionedCall", "PartitionedCall"} & set(ops) else ""
        raise NotExportable(f"tf2onnx cannot convert the TensorFlow operators {', '.join(ops) or exc}{hint}") from exc
    return proto


# -- graph surgery ------------------------------------------------------------------------


def _finish(proto: Any, sig: Signature, *, outputs: dict[str, str], per_column: bool = False,
            classes: np.ndarray[Any, Any] | None = None) -> Any:
    """Give the converted graph the source's input and output names (see the module docstring)."""
    onnx = require("onnx", EXTRA)
    helper = onnx.helper
    graph = proto.graph
    opset = _default_opset(proto)
    front: list[Any] = []
    inits: list[Any] = []
    names = {i.name for i in graph.input}
    if FEATURES in names:
        # Columns (or one matrix) -> the converter's single feature matrix.
        if sig.format == "columns" or all(len(s.shape) == 1 for s in sig.inputs):
            new_inputs = [helper.make_tensor_value_info(s.name, onnx.TensorProto.FLOAT, ["N"]) for s in sig.inputs]
            cols = []
            for s in sig.inputs:
                cols.append(_unsqueeze(helper, front, inits, s.name, f"{s.name}__col", opset))
            front.append(helper.make_node("Concat", cols, [FEATURES], axis=1, name="shipyard_concat"))
        else:
            s = sig.inputs[0]
            new_inputs = [helper.make_tensor_value_info(s.name, onnx.TensorProto.FLOAT, ["N", s.shape[1]])]
            front.append(helper.make_node("Identity", [s.name], [FEATURES], name="shipyard_input"))
        _replace_inputs(graph, new_inputs)
    elif per_column:
        new_inputs = []
        for s in sig.inputs:
            inner = next(i for i in graph.input if i.name == s.name)
            elem = inner.type.tensor_type.elem_type
            _rename(graph, s.name, f"{s.name}__2d")
            new_inputs.append(helper.make_tensor_value_info(s.name, elem, ["N"]))
            _unsqueeze(helper, front, inits, s.name, f"{s.name}__2d", opset)
        _replace_inputs(graph, new_inputs)
    if front:
        nodes = front + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
    for old, new in outputs.items():
        if old != new:
            _rename(graph, old, new)
    if classes is not None and not _is_range(classes):
        _map_labels(onnx, graph, outputs.get(graph.output[0].name, graph.output[0].name), classes)
    _squeeze_columns(onnx, graph, sig, opset)
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    del graph.value_info[:]  # stale shapes from the converter confuse quantization's shape inference
    if re.fullmatch(r"[0-9a-f]{32}", graph.name):
        # skl2onnx and onnxmltools name each graph with a fresh uuid; a stable name makes the same
        # model convert to the same bytes, so an export registered twice is recognised as identical
        graph.name = "shipyard_export"
    onnx.checker.check_model(proto)
    return proto


def _squeeze_columns(onnx: Any, graph: Any, sig: Signature, opset: int) -> None:
    """A regressor's [N, 1] output becomes [N] when the source returns one value per row."""
    one_d = {s.name for s in sig.outputs if len(s.shape) == 1}
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.name not in one_d or len(dims) != 2 or dims[1].dim_value != 1:
            continue
        name = out.name
        inner = f"{name}__2d"
        _rename(graph, name, inner)  # the producing node now writes the inner name ...
        out.name = name  # ... and the graph output keeps the public one, made by Squeeze
        if opset >= 13:
            graph.initializer.append(onnx.helper.make_tensor(f"{inner}__axes", onnx.TensorProto.INT64, [1], [1]))
            node = onnx.helper.make_node("Squeeze", [inner, f"{inner}__axes"], [name], name=f"shipyard_squeeze_{name}")
        else:
            node = onnx.helper.make_node("Squeeze", [inner], [name], axes=[1], name=f"shipyard_squeeze_{name}")
        graph.node.append(node)
        del dims[1]


def _default_opset(proto: Any) -> int:
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    # Tree-only graphs import just ai.onnx.ml; the nodes added here need the default domain.
    onnx = require("onnx", EXTRA)
    proto.opset_import.append(onnx.helper.make_opsetid("", 15))
    return 15


def _unsqueeze(helper: Any, nodes: list[Any], inits: list[Any], src: str, dst: str, opset: int) -> str:
    if opset >= 13:
        if not any(i.name == "__shipyard_axis1" for i in inits):
            inits.append(helper.make_tensor("__shipyard_axis1", 7, [1], [1]))  # 7 = INT64
        nodes.append(helper.make_node("Unsqueeze", [src, "__shipyard_axis1"], [dst], name=f"shipyard_unsqueeze_{dst}"))
    else:
        nodes.append(helper.make_node("Unsqueeze", [src], [dst], axes=[1], name=f"shipyard_unsqueeze_{dst}"))
    return dst


def _replace_inputs(graph: Any, new_inputs: list[Any]) -> None:
    initializers = {i.name for i in graph.initializer}
    kept = [i for i in graph.input if i.name in initializers]  # old-style graphs list weights as inputs
    del graph.input[:]
    graph.input.extend(new_inputs + kept)


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for vi in list(graph.input) + list(graph.output):
        if vi.name == old:
            vi.name = new


def _is_range(classes: np.ndarray[Any, Any]) -> bool:
    return classes.dtype.kind in ("i", "u") and np.array_equal(classes, np.arange(len(classes)))


def _map_labels(onnx: Any, graph: Any, label: str, classes: np.ndarray[Any, Any]) -> None:
    """Class index -> the classifier's own label, with a Gather over a constant of the labels."""
    helper = onnx.helper
    index = f"{label}__index"
    _rename(graph, label, index)
    out = next(o for o in graph.output if o.name == index)
    out.name = label
    if classes.dtype.kind in ("U", "S", "O"):
        table = helper.make_tensor("__shipyard_classes", onnx.TensorProto.STRING, [len(classes)],
                                   [str(c).encode() for c in classes])
        elem = onnx.TensorProto.STRING
    elif classes.dtype.kind == "f":
        table = helper.make_tensor("__shipyard_classes", onnx.TensorProto.DOUBLE, [len(classes)], classes.tolist())
        elem = onnx.TensorProto.DOUBLE
    else:
        table = helper.make_tensor("__shipyard_classes", onnx.TensorProto.INT64, [len(classes)],
                                   classes.astype(np.int64).tolist())
        elem = onnx.TensorProto.INT64
    graph.initializer.append(table)
    graph.node.append(helper.make_node("Gather", ["__shipyard_classes", index], [label], axis=0,
                                       name="shipyard_labels"))
    out.type.tensor_type.elem_type = elem


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the converters' chatter out of the user's output, narrowly.

    torch.onnx 2.13 triggers a FutureWarning of its own pytree code and logs a
    warning per torchvision operator it cannot register; neither concerns the user.
    """
    noisy = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                    DeprecationWarning)
            warnings.filterwarnings("ignore", "The feature will be removed. Please remove usage of this function",
                                    DeprecationWarning)
            warnings.filterwarnings("ignore", "no signature found for <torch.ScriptMethod", UserWarning)
            yield
    finally:
        noisy.setLevel(level)

