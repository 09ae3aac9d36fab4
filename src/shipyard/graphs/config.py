"""Graphs declared in files: the ``graph:`` block of shipyard.yaml, and graph files for ``shipyard register``.

A ``graph:`` block is one graph or a list of them::

    graph:
      name: iris-pipeline        # the model name it is registered and served as
      alias: champion            # optional: moved to the graph's version
      steps:
        - scaler@champion
        - {name: model, model: iris@champion}
        - {name: threshold, model: cut:1, on_error: default, default: {label: 0}}

``shipyard serve`` registers each declared graph (its current version is reused when
nothing changed: same steps, same versions) before it starts, and serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shipyard.errors import ConfigError, InvalidInput
from shipyard.graphs.spec import Graph
from shipyard.types import ModelRef, check_name

_KEYS = ("name", "alias", "description", "steps")


@dataclass(frozen=True)
class DeclaredGraph:
    """One graph of a ``graph:`` block: the name it is registered as, an alias to move, the graph."""

    name: str
    graph: Graph
    alias: str | None = None

    @property
    def ref(self) -> str:
        """What a server serves it as."""
        return f"{self.name}@{self.alias}" if self.alias else self.name


def declared(block: Any) -> list[DeclaredGraph]:
    """The graphs of a ``graph:`` block (one mapping or a list of them); ConfigError naming the key at fault."""
    if block in (None, {}, []):
        return []
    items = block if isinstance(block, list) else [block]
    out: list[DeclaredGraph] = []
    for i, item in enumerate(items):
        where = "graph" if not isinstance(block, list) else f"graph[{i}]"
        try:
            out.append(_one(item, where))
        except InvalidInput as exc:
            raise ConfigError(f"{where}: {exc}") from None
    names = [g.name for g in out]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"graph: '{n}' is declared twice")
    return out


def _one(item: Any, where: str) -> DeclaredGraph:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"must be a mapping with name and steps, got {type(item).__name__}", field=where)
    unknown = [k for k in item if k not in _KEYS]
    if unknown:
        raise InvalidInput(f"unknown key '{unknown[0]}'; a graph takes {', '.join(_KEYS)}", field=str(unknown[0]))
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidInput("needs 'name', the model name the graph is registered and served as", field="name")
    check_name("model name", name)
    alias = item.get("alias")
    if alias is not None:
        ModelRef.parse(f"{name}@{alias}")
    graph = Graph.from_dict({k: v for k, v in item.items() if k in ("steps", "description")})
    return DeclaredGraph(name, graph, None if alias is None else str(alias))


def read_graph_file(path: Path, name: str | None = None) -> Graph:
    """The graph in a YAML file: a mapping with ``steps``, or a shipyard.yaml whose ``graph:`` block
    declares it (by ``name`` when it declares several)."""
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the graph file {path}: {exc}") from None
    if isinstance(content, Mapping) and "graph" in content:
        graphs = declared(content["graph"])
        if not graphs:
            raise ConfigError(f"{path}: the graph: block is empty")
        if len(graphs) == 1 and (name is None or graphs[0].name == name):
            return graphs[0].graph
        match = [g for g in graphs if g.name == name]
        if not match:
            raise ConfigError(f"{path} declares no graph named '{name}' (it declares "
                              f"{', '.join(g.name for g in graphs)})")
        return match[0].graph
    if isinstance(content, Mapping) and "steps" in content:
        try:
            return Graph.from_dict({k: v for k, v in content.items() if k in ("steps", "description")})
        except InvalidInput as exc:
            raise ConfigError(f"{path}: {exc}") from None
    raise ConfigError(f"{path} holds no graph: expected 'steps:' or a 'graph:' block")


def register_declared(graphs: list[DeclaredGraph], registry: Any) -> list[str]:
    """Register each declared graph (reusing its version when nothing changed); the references to serve."""
    refs = []
    for g in graphs:
        registry.register(g.graph, g.name, alias=g.alias, if_identical="reuse", description=g.graph.description)
        refs.append(g.ref)
    return refs
