"""What a graph is made of: named steps wired as a sequence, fan-outs with a join, and switches.

A ``Graph`` is a list of nodes run in order; each node takes what the node before it
returned (the first takes the request's inputs):

* ``Node(name, model)``: one registered version (a model, or a ``shipyard.Step``),
  named by a reference (``scaler``, ``scaler@champion``, ``scaler:3``) that is pinned
  to a version number when the graph is registered;
* ``FanOut(name, branches, join)``: every branch gets the same inputs; their outputs
  are joined by ``mean``, ``weighted`` (with ``weights``), ``vote``, or a ``Node``
  whose inputs are the branches' outputs named ``BRANCH.OUTPUT``;
* ``Switch(name, field, cases, otherwise)``: each row goes to the case its ``field``
  value names (``otherwise`` when none does); rows come back in their order.

* ``Explain(name, step)``: only as the last node, right after a single step: that step's
  outputs, plus the feature attributions (SHAP, extra ``explain``) of its prediction for
  each row: ``base_value``, ``explained_value`` and ``attribution.FEATURE`` per input.

A leaf node may be optional: ``on_error="skip"`` passes its inputs on unchanged (or,
in a fan-out, leaves the branch out of the join), ``on_error="default"`` answers the
constant outputs in ``default`` for every row. These are plain values; wiring checks
against the steps' signatures happen at registration (``shipyard.graphs.wiring``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shipyard.errors import InvalidInput
from shipyard.options import nearest
from shipyard.types import ModelRef, check_name

ON_ERROR = ("fail", "skip", "default")
PLACEMENT_SCHEMES = ("grpc", "grpcs", "http", "https")
JOINS = ("mean", "weighted", "vote")
POOL = "workers"
MAX_POOL_WORKERS = 64

_NODE_KEYS = ("name", "model", "on_error", "default", "placement")
_FAN_OUT_KEYS = ("name", "fan_out", "join", "weights")
_SWITCH_KEYS = ("name", "switch", "cases", "otherwise")
_EXPLAIN_KEYS = ("name", "explain")
_REMOTE_KEYS = ("url", "token_env", "ca_file")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Node:
    """One step: a registered version, by reference."""

    name: str
    """The step's name in the graph (metrics, spans, errors and the prediction log use it)."""
    model: str
    """The version it runs: ``name``, ``name@alias`` or ``name:VERSION`` (pinned at registration)."""
    on_error: str = "fail"
    """``fail`` the request, ``skip`` the step (its inputs go on), or answer ``default``."""
    default: Mapping[str, Any] | None = None
    """With ``on_error="default"``: one constant per output of the step, given to every row."""
    placement: str | Mapping[str, Any] | None = None
    """Where the step runs: in this server's process (None, ``local``), on a worker pool of its own
    inside the server (``{"workers": N}``, kept as ``workers:N``: N child processes serving its
    version, ``graphs/pool.py``), or on the shipyard server at a ``grpc://``, ``grpcs://``, ``http://``
    or ``https://`` URL that serves its version (``{"url": URL, "token_env": NAME, "ca_file": PATH}``
    with credentials, kept as ``placement``, ``token_env`` and ``ca_file``)."""
    token_env: str | None = None
    """With a URL placement: the environment variable holding the API key or token sent to that server
    (as ``authorization: Bearer``); read where the graph loads, never stored in the graph."""
    ca_file: str | None = None
    """With a ``grpcs://`` or ``https://`` placement: the CA certificates that server is checked against
    (default: the system's store)."""

    def __post_init__(self) -> None:
        _check_step_name(self.name)
        if isinstance(self.placement, Mapping) and any(k in self.placement for k in _REMOTE_KEYS):
            _remote_placement(self)
        if self.placement in ("", "local"):
            object.__setattr__(self, "placement", None)
        pool = _pool_size(self.name, self.placement)
        if pool is not None:
            object.__setattr__(self, "placement", f"{POOL}:{pool}")
        elif self.placement is not None:
            parts = urlsplit(str(self.placement))
            if parts.scheme not in PLACEMENT_SCHEMES or not parts.netloc or parts.path not in ("", "/"):
                raise _bad(self.name, f"placement must be 'local', {{{POOL}: N}} or a server URL such as "
                           f"grpc://host:8001, got {self.placement!r}")
        if (self.token_env is not None or self.ca_file is not None) and self.remote_url is None:
            raise _bad(self.name, "token_env and ca_file go with a server URL placement "
                       "({url: grpcs://host:8001, token_env: NAME})")
        if self.token_env is not None and not _ENV_NAME.fullmatch(str(self.token_env)):
            raise _bad(self.name, f"placement.token_env must name an environment variable (letters, digits and _, "
                       f"not starting with a digit), got {self.token_env!r}")
        if self.ca_file is not None and (not self.ca_file or not str(self.remote_url).startswith(("grpcs:", "https:"))):
            raise _bad(self.name, f"placement.ca_file applies to grpcs:// and https:// URLs, not {self.remote_url}")
        try:
            ModelRef.parse(self.model)
        except InvalidInput as exc:
            raise _bad(self.name, f"model: {exc}") from None
        if self.on_error not in ON_ERROR:
            raise _bad(self.name, f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.on_error == "default":
            if not isinstance(self.default, Mapping) or not self.default:
                raise _bad(self.name, "on_error: default needs 'default', a mapping of each output to its value")
        elif self.default is not None:
            raise _bad(self.name, "'default' is only used with on_error: default")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "model": self.model}
        if self.on_error != "fail":
            d["on_error"] = self.on_error
        if self.default is not None:
            d["default"] = dict(self.default)
        if self.pool_workers is not None:
            d["placement"] = {POOL: self.pool_workers}
        elif self.token_env is not None or self.ca_file is not None:
            d["placement"] = {"url": self.placement, **({"token_env": self.token_env} if self.token_env else {}),
                              **({"ca_file": self.ca_file} if self.ca_file else {})}
        elif self.placement is not None:
            d["placement"] = self.placement
        return d

    @property
    def where(self) -> str | None:
        """The placement as text: ``workers:N``, the server's URL, or None (in this server's process)."""
        return self.placement if isinstance(self.placement, str) else None

    @property
    def pool_workers(self) -> int | None:
        """The size of the step's own worker pool (``placement: {workers: N}``); None: not on a pool."""
        if self.where is None or not self.where.startswith(f"{POOL}:"):
            return None
        return int(self.where.split(":", 1)[1])

    @property
    def remote_url(self) -> str | None:
        """The URL of the server the step is placed on; None: in this server (its process or a pool)."""
        return None if self.pool_workers is not None else self.where


@dataclass(frozen=True)
class FanOut:
    """Every branch gets the same inputs; their outputs are joined into one."""

    name: str
    branches: tuple[Node, ...]
    join: str | Node = "mean"
    """``mean``, ``weighted``, ``vote`` or a step that takes ``BRANCH.OUTPUT`` inputs."""
    weights: tuple[float, ...] | None = None
    """With ``join="weighted"``: one positive weight per branch (normalised to sum to 1)."""

    def __post_init__(self) -> None:
        _check_step_name(self.name)
        object.__setattr__(self, "branches", tuple(self.branches))
        if len(self.branches) < 2:
            raise _bad(self.name, "a fan-out needs at least two branches")
        if isinstance(self.join, str) and self.join not in JOINS:
            near = nearest(self.join, JOINS)
            raise _bad(self.name, f"join must be one of {', '.join(JOINS)} or a step, got {self.join!r}"
                       + (f"; did you mean {near!r}?" if near else ""))
        if self.join == "weighted":
            if self.weights is None or len(self.weights) != len(self.branches):
                raise _bad(self.name, f"join: weighted needs 'weights', one per branch ({len(self.branches)})")
            if not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in self.weights):
                raise _bad(self.name, f"weights must be positive numbers, got {list(self.weights)}")
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        elif self.weights is not None:
            raise _bad(self.name, "'weights' is only used with join: weighted")
        if isinstance(self.join, Node) and any(b.on_error == "skip" for b in self.branches):
            raise _bad(self.name, "a branch joined by a step cannot be skipped (the step needs every branch's "
                       "outputs); use on_error: default")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "fan_out": [b.to_dict() for b in self.branches],
                             "join": self.join.to_dict() if isinstance(self.join, Node) else self.join}
        if self.weights is not None:
            d["weights"] = list(self.weights)
        return d


@dataclass(frozen=True)
class Switch:
    """Each row goes to the case its ``field`` names; ``otherwise`` takes the rest."""

    name: str
    field: str
    cases: Mapping[str, Node]
    otherwise: Node | None = None

    def __post_init__(self) -> None:
        _check_step_name(self.name)
        if not isinstance(self.field, str) or not self.field:
            raise _bad(self.name, "switch needs the name of the input field to route on")
        if not self.cases:
            raise _bad(self.name, "switch needs at least one case")
        object.__setattr__(self, "cases", {str(k): v for k, v in self.cases.items()})
        if any(c.on_error == "skip" for c in [*self.cases.values(), *([self.otherwise] if self.otherwise else [])]):
            raise _bad(self.name, "a case of a switch cannot be skipped (its rows need the outputs every case "
                       "returns); use on_error: default")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "switch": self.field,
                             "cases": {k: v.to_dict() for k, v in self.cases.items()}}
        if self.otherwise is not None:
            d["otherwise"] = self.otherwise.to_dict()
        return d


@dataclass(frozen=True)
class Explain:
    """The last step of a graph: the attributions of the step right before it, for each row.

    Its outputs are that step's outputs plus ``base_value``, ``explained_value`` (what is
    explained: a classifier's probability or margin of its predicted class, else the
    prediction; ``base_value`` plus the attributions add up to it) and one
    ``attribution.FEATURE`` per input of the explained step, all FP64 (see ``shipyard.explain``).
    """

    name: str = "explain"
    step: str | None = None
    """The step it explains: the one right before it (None: that one)."""

    def __post_init__(self) -> None:
        _check_step_name(self.name)
        if self.step is not None and not isinstance(self.step, str):
            raise _bad(self.name, f"explain must name the step it explains, got {type(self.step).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "explain": self.step}


AnyNode = Node | FanOut | Switch | Explain


@dataclass(frozen=True)
class Graph:
    """An inference graph: register it like a model (``shipyard.register(graph, name="...")``).

    Args:
        steps: the nodes, run in order: ``Node``, ``FanOut``, ``Switch``, their dict forms
            (as in a ``graph:`` block of shipyard.yaml), or a bare reference such as
            ``"scaler@champion"`` (a step named after the model).
        description: free text kept with the version.

    Example:
        graph = shipyard.Graph(["scaler@champion", "iris@champion",
                                Node("threshold", "cut:1", on_error="default", default={"label": 0})])
        shipyard.register(graph, name="iris-pipeline", alias="champion")
    """

    steps: tuple[AnyNode, ...]
    description: str = ""
    _leaves: tuple[Node, ...] = field(default=(), init=False, repr=False, compare=False)

    def __init__(self, steps: Sequence[AnyNode | str | Mapping[str, Any]], description: str = "") -> None:
        if isinstance(steps, (str, Mapping)) or not isinstance(steps, Sequence) or not steps:
            raise InvalidInput("a graph needs 'steps', a list of at least one step", field="steps")
        nodes = tuple(_node(s, f"steps[{i}]") for i, s in enumerate(steps))
        object.__setattr__(self, "steps", nodes)
        object.__setattr__(self, "description", description)
        seen: set[str] = set()
        for name in _names(nodes):
            if name in seen:
                raise InvalidInput(f"step name '{name}' is used twice in the graph; every step needs its own name",
                                   field="steps", got=name)
            seen.add(name)
        object.__setattr__(self, "steps", _pin_explain(nodes))
        object.__setattr__(self, "_leaves", tuple(leaves(nodes)))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Graph:
        """A graph from its dict form (a ``graph:`` block without ``name``/``alias``)."""
        if not isinstance(spec, Mapping):
            raise InvalidInput(f"a graph must be a mapping with 'steps', got {type(spec).__name__}", field="graph")
        unknown = [k for k in spec if k not in ("steps", "description")]
        if unknown:
            raise InvalidInput(f"unknown key '{unknown[0]}' in a graph; it takes steps and description",
                               field=str(unknown[0]))
        return cls(spec.get("steps") or [], description=str(spec.get("description") or ""))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"steps": [n.to_dict() for n in self.steps]}
        if self.description:
            d["description"] = self.description
        return d

    @property
    def leaves(self) -> tuple[Node, ...]:
        """Every step that runs a version (branches, cases and join steps included), in order."""
        return self._leaves

    def resolve_in(self, registry: Any) -> Any:
        """This graph with each step pinned to a version of ``registry`` (called by ``Registry.register``)."""
        from shipyard.graphs.resolve import resolve  # the registry is only needed to register

        return resolve(self, registry)


def _pin_explain(nodes: tuple[AnyNode, ...]) -> tuple[AnyNode, ...]:
    """``nodes`` with an explain step naming the step it explains; refused anywhere but last, after a step."""
    for i, n in enumerate(nodes):
        if not isinstance(n, Explain):
            continue
        if i != len(nodes) - 1:
            raise _bad(n.name, "an explain step can only end a graph (it must be the last step)")
        before = nodes[i - 1] if i else None
        if not isinstance(before, Node):
            raise _bad(n.name, "an explain step explains the single step right before it"
                       + ("; it cannot be the first step" if before is None else
                          f", and '{before.name}' is a {type(before).__name__}"))
        if n.step is not None and n.step != before.name:
            raise _bad(n.name, f"explain names step '{n.step}', but the step right before it is '{before.name}' "
                       "(an explain step explains the step it follows)")
        if before.on_error != "fail":
            raise _bad(n.name, f"step '{before.name}' may be skipped or answer a default (on_error: "
                       f"{before.on_error}); an explained step must answer for itself (on_error: fail)")
        return (*nodes[:-1], Explain(n.name, before.name))
    return nodes


def leaves(nodes: Sequence[AnyNode]) -> Iterator[Node]:
    for n in nodes:
        if isinstance(n, Explain):
            continue
        if isinstance(n, Node):
            yield n
        elif isinstance(n, FanOut):
            yield from n.branches
            if isinstance(n.join, Node):
                yield n.join
        else:
            yield from n.cases.values()
            if n.otherwise is not None:
                yield n.otherwise


def _names(nodes: Sequence[AnyNode]) -> Iterator[str]:
    for n in nodes:
        if not isinstance(n, Node):
            yield n.name
    for leaf in leaves(nodes):
        yield leaf.name


def _node(value: Any, where: str) -> AnyNode:
    if isinstance(value, (Node, FanOut, Switch, Explain)):
        return value
    if isinstance(value, str):
        try:
            ref = ModelRef.parse(value)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}", field=where, got=value) from None
        return Node(ref.name, value)
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where} must be a reference or a mapping with a name and a model, fan_out, switch or "
                           f"explain, got {type(value).__name__}", field=where)
    if "fan_out" in value:
        _check_keys(value, _FAN_OUT_KEYS, where)
        join = value.get("join", "mean")
        branches = value["fan_out"]
        if not isinstance(branches, Sequence) or isinstance(branches, (str, Mapping)):
            raise InvalidInput(f"{where}.fan_out must be a list of steps", field=f"{where}.fan_out")
        return FanOut(
            _name(value, where),
            tuple(_leaf(b, f"{where}.fan_out[{i}]") for i, b in enumerate(branches)),
            join=_leaf(join, f"{where}.join") if isinstance(join, Mapping) else join,
            weights=tuple(value["weights"]) if value.get("weights") is not None else None,
        )
    if "explain" in value:
        _check_keys(value, _EXPLAIN_KEYS, where)
        step = value["explain"]
        return Explain(str(value.get("name", "explain")), None if step in (None, True) else step)
    if "switch" in value:
        _check_keys(value, _SWITCH_KEYS, where)
        cases = value.get("cases")
        if not isinstance(cases, Mapping):
            raise InvalidInput(f"{where}.cases must map each value of the field to a step", field=f"{where}.cases")
        otherwise = value.get("otherwise")
        return Switch(
            _name(value, where), value["switch"],
            {str(k): _leaf(v, f"{where}.cases.{k}") for k, v in cases.items()},
            otherwise=None if otherwise is None else _leaf(otherwise, f"{where}.otherwise"),
        )
    return leaf_from_mapping(value, where)


def _leaf(value: Any, where: str) -> Node:
    node = _node(value, where)
    if not isinstance(node, Node):
        raise InvalidInput(f"{where} must be a single step (a model), not a {type(node).__name__}", field=where)
    return node


def _name(value: Mapping[str, Any], where: str) -> str:
    name = value.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{where} needs a 'name'", field=f"{where}.name")
    return name


def _check_keys(value: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for k in value:
        if k not in known:
            near = nearest(str(k), known)
            raise InvalidInput(f"unknown key '{k}' in {where}; it takes {', '.join(known)}"
                               + (f" (did you mean '{near}'?)" if near else ""), field=f"{where}.{k}")


def leaf_from_mapping(value: Mapping[str, Any], where: str) -> Node:
    """A ``Node`` from ``{name, model, on_error, default, placement}``."""
    _check_keys(value, _NODE_KEYS, where)
    model = value.get("model")
    if not isinstance(model, str):
        raise InvalidInput(f"{where} needs 'model', the reference of a registered version", field=f"{where}.model")
    name = value.get("name", ModelRef.parse(model).name)
    placement = value.get("placement")
    return Node(str(name), model, on_error=str(value.get("on_error", "fail")), default=value.get("default"),
                placement=None if placement is None else placement if isinstance(placement, Mapping)
                else str(placement))


def _remote_placement(node: Node) -> None:
    """Spread ``{url, token_env, ca_file}`` over the node's fields (checked by ``__post_init__``)."""
    placement: dict[str, Any] = dict(node.placement) if isinstance(node.placement, Mapping) else {}
    _check_keys(placement, _REMOTE_KEYS, f"step '{node.name}' placement")
    url = placement.get("url")
    if not isinstance(url, str) or not url:
        raise _bad(node.name, "placement as a mapping is {workers: N} or {url: grpc://host:8001, token_env: NAME, "
                   f"ca_file: PATH}}, got {placement!r}")
    for key in ("token_env", "ca_file"):
        if placement.get(key) is not None and getattr(node, key) is not None:
            raise _bad(node.name, f"{key} given twice (in placement and as a field)")
        if placement.get(key) is not None:
            object.__setattr__(node, key, str(placement[key]))
    object.__setattr__(node, "placement", url)


def _pool_size(step: str, placement: Any) -> int | None:
    """N of a ``{workers: N}`` (or ``workers:N``) placement; None for the other forms; refused when malformed."""
    if isinstance(placement, str) and placement.startswith(f"{POOL}:"):
        text = placement.split(":", 1)[1]
        placement = {POOL: int(text) if text.isdigit() else text}
    if not isinstance(placement, Mapping):
        return None
    unknown = [k for k in placement if k != POOL]
    workers = placement.get(POOL)
    if unknown or isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_POOL_WORKERS:
        raise _bad(step, f"placement as a worker pool is {{{POOL}: N}} with N from 1 to {MAX_POOL_WORKERS}, "
                   f"got {dict(placement)!r} (a server: {{url: grpc://host:8001, token_env: NAME}})")
    return workers


def _check_step_name(name: str) -> None:
    if not isinstance(name, str):
        raise InvalidInput(f"a step name must be text, got {type(name).__name__}", field="name")
    check_name("step name", name)


def _bad(step: str, message: str) -> InvalidInput:
    return InvalidInput(f"step '{step}': {message}", field=step)
