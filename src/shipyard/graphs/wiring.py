"""A graph's signature, derived from its steps' signatures, and the checks that its steps fit together.

Pure functions over ``Signature`` values, run at registration (before anything is
written) and again when a stored graph loads. The graph takes what its first node
takes and returns what its last node returns. Each node must find every input it
needs among the outputs of the node before it, with a datatype that converts
without loss and the same trailing shape; a refusal names both steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shipyard.errors import InvalidInput
from shipyard.graphs.spec import Explain, FanOut, Graph, Node, Switch
from shipyard.signature import WIDENS_TO, Signature, TensorSpec

_FLOATS = ("FP16", "FP32", "FP64")
_Label = Callable[[str], str]
_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


@dataclass(frozen=True)
class _Produced:
    """What a node hands on: its outputs, and who produced them (for messages)."""

    specs: dict[str, TensorSpec]
    by: str
    skip_inputs: dict[str, TensorSpec] | None = None
    """When the node may be skipped, what it got (the next node then gets that instead)."""


def derive_signature(graph: Graph, signatures: Mapping[str, Signature], refs: Mapping[str, str]) -> Signature:
    """The graph's signature; InvalidInput naming the steps when two of them do not fit.

    Args:
        graph: the graph.
        signatures: step name -> the signature of the version it runs.
        refs: step name -> that version's reference (``scaler:1``), for messages.
    """
    def label(step: str) -> str:
        return f"'{step}' ({refs[step]})" if step in refs else f"'{step}'"

    inputs: dict[str, TensorSpec] = {}
    fmt = signatures[graph.leaves[0].name].format
    produced: _Produced | None = None
    for node in graph.steps:
        if isinstance(node, Explain):  # last, after a step (spec.py): what that step returned, and why
            assert produced is not None
            produced = _Produced(explained_outputs(produced.specs, node, signatures[str(node.step)], label), node.name)
            continue
        needs = _needs(node, signatures, produced, label)
        if produced is None:
            inputs = needs
        else:
            _check_fits(produced, node.name, needs, label)
        available = produced.specs if produced is not None else inputs
        produced = _produces(node, signatures, available, label)
    assert produced is not None
    return Signature(inputs=tuple(inputs.values()), outputs=tuple(produced.specs.values()), format=fmt)


BASE_VALUE = "base_value"
EXPLAINED_VALUE = "explained_value"
ATTRIBUTION = "attribution."
"""Prefix of an explain step's output for each input feature of the explained step."""


def explained_outputs(outputs: Mapping[str, TensorSpec], node: Explain, explained: Signature,
                      label: _Label) -> dict[str, TensorSpec]:
    """What an explain step returns: the explained step's ``outputs``, its base value, explained value and one
    attribution per input feature (FP64, one per row); refused unless the step takes numeric columns."""
    step = str(node.step)
    bad = [s for s in explained.inputs if len(s.shape) != 1 or s.datatype in ("BYTES", "BOOL")]
    if explained.format != "columns" or bad or not explained.inputs:
        raise InvalidInput(
            f"explain step '{node.name}' explains step {label(step)}, which takes "
            f"{', '.join(s.name + ' ' + s.describe() for s in explained.inputs) or 'nothing'}; explanations need "
            "numeric columns, one value per feature", field=node.name)
    added = [BASE_VALUE, EXPLAINED_VALUE, *(ATTRIBUTION + s.name for s in explained.inputs)]
    clash = [n for n in added if n in outputs]
    if clash:
        raise InvalidInput(f"explain step '{node.name}' adds '{clash[0]}', which step {label(step)} already returns",
                           field=node.name)
    return {**outputs, **{n: TensorSpec(n, "FP64", (-1,)) for n in added}}


def _needs(node: Node | FanOut | Switch, sigs: Mapping[str, Signature], before: _Produced | None,
           label: _Label) -> dict[str, TensorSpec]:
    """The inputs ``node`` takes: a step's own; the union over branches or cases (they must agree)."""
    if isinstance(node, Node):
        return {s.name: s for s in sigs[node.name].inputs}
    branches = list(node.branches) if isinstance(node, FanOut) else [*node.cases.values(),
                                                                      *([node.otherwise] if node.otherwise else [])]
    out: dict[str, TensorSpec] = {}
    owner: dict[str, str] = {}
    for b in branches:
        for s in sigs[b.name].inputs:
            had = out.get(s.name)
            if had is not None and (had.datatype != s.datatype or _tail(had) != _tail(s)):
                raise InvalidInput(
                    f"steps {label(owner[s.name])} and {label(b.name)} of '{node.name}' both take '{s.name}' "
                    f"but as {had.describe()} and {s.describe()}; branches given the same inputs must agree on them",
                    field=node.name)
            out.setdefault(s.name, s)
            owner.setdefault(s.name, b.name)
    if isinstance(node, Switch) and node.field not in out:
        if before is not None and node.field in before.specs:
            out[node.field] = before.specs[node.field]
        elif before is None:  # routed on a field no case takes: a text column of the request
            out[node.field] = TensorSpec(node.field, "BYTES", (-1,))
        else:
            raise InvalidInput(
                f"switch '{node.name}' routes on '{node.field}', which {label(before.by)} does not return "
                f"(it returns {', '.join(before.specs) or 'nothing'})", field=node.name)
    return out


def _check_fits(before: _Produced, step: str, needs: Mapping[str, TensorSpec], label: _Label) -> None:
    for sources, what in ((before.specs, "returns"), (before.skip_inputs, "passes on when skipped")):
        if sources is None:
            continue
        for name, spec in needs.items():
            got = sources.get(name)
            if got is None:
                raise InvalidInput(
                    f"step {label(step)} takes '{name}', which step {label(before.by)} does not produce "
                    f"(it {what} {', '.join(sources) or 'nothing'})",
                    field=step, expected=name, got=sorted(sources))
            if not _converts(got, spec):
                raise InvalidInput(
                    f"step {label(step)} takes '{name}' as {spec.describe()}, but step {label(before.by)} "
                    f"{what} it as {got.describe()}",
                    field=step, expected=spec.describe(), got=got.describe())


def _produces(node: Node | FanOut | Switch, sigs: Mapping[str, Signature], available: Mapping[str, TensorSpec],
              label: _Label) -> _Produced:
    if isinstance(node, Node):
        _check_default(node, sigs[node.name], label)
        outs = {s.name: s for s in sigs[node.name].outputs}
        return _Produced(outs, node.name, dict(available) if node.on_error == "skip" else None)
    branches = list(node.branches) if isinstance(node, FanOut) else [*node.cases.values(),
                                                                      *([node.otherwise] if node.otherwise else [])]
    for b in branches:
        _check_default(b, sigs[b.name], label)
    if isinstance(node, FanOut) and isinstance(node.join, Node):
        joined = {f"{b.name}.{s.name}": s for b in node.branches for s in sigs[b.name].outputs}
        _check_fits(_Produced(joined, node.name), node.join.name,
                    {s.name: s for s in sigs[node.join.name].inputs}, label)
        _check_default(node.join, sigs[node.join.name], label)
        return _Produced({s.name: s for s in sigs[node.join.name].outputs}, node.join.name)
    first = branches[0]
    outs = {s.name: s for s in sigs[first.name].outputs}
    for b in branches[1:]:
        other = [s.name for s in sigs[b.name].outputs]
        if sorted(other) != sorted(outs):
            raise InvalidInput(
                f"steps {label(first.name)} and {label(b.name)} of '{node.name}' return different outputs "
                f"({', '.join(outs)} and {', '.join(other)}); "
                + ("a join by mean, weighted or vote needs the same outputs from every branch"
                   if isinstance(node, FanOut) else "every case of a switch must return the same outputs"),
                field=node.name)
    if isinstance(node, FanOut) and node.join in ("mean", "weighted"):
        for s in outs.values():
            if s.datatype not in _FLOATS + _INTS + ("BOOL",):
                raise InvalidInput(f"'{node.name}' joins by {node.join}, but output '{s.name}' of "
                                   f"{label(first.name)} is {s.describe()}, not numbers; use join: vote",
                                   field=node.name)
        outs = {k: TensorSpec(k, "FP64", s.shape) for k, s in outs.items()}
    return _Produced(outs, node.name)


def _check_default(node: Node, sig: Signature, label: _Label) -> None:
    if node.on_error != "default" or node.default is None:
        return
    names = [s.name for s in sig.outputs]
    missing = [n for n in names if n not in node.default]
    extra = [k for k in node.default if k not in names]
    if missing or extra:
        raise InvalidInput(
            f"step {label(node.name)}: 'default' must give a value for each output ({', '.join(names)}); "
            + (f"'{missing[0]}' is missing" if missing else f"'{extra[0]}' is not an output"),
            field=node.name, expected=names, got=sorted(node.default))


def _tail(spec: TensorSpec) -> tuple[int, ...]:
    return spec.shape[1:]


def _converts(got: TensorSpec, want: TensorSpec) -> bool:
    """Whether values of ``got`` become ``want`` without losing meaning (floats to integers do not)."""
    if len(got.shape) != len(want.shape):
        return False
    for a, b in zip(_tail(got), _tail(want), strict=True):
        if a != -1 and b != -1 and a != b:
            return False
    if got.datatype == want.datatype or got.datatype in WIDENS_TO.get(want.datatype, ()):
        return True
    if want.datatype in _FLOATS:
        return got.datatype in _FLOATS + _INTS + ("BOOL",)
    if want.datatype in _INTS:
        return got.datatype in _INTS + ("BOOL",)
    return False
