"""Pinning a graph's steps to registered versions, and checking that they fit, before it is stored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.errors import InvalidInput, ModelNotFound
from shipyard.graphs.spec import Graph
from shipyard.graphs.wiring import derive_signature
from shipyard.registry.model import ModelVersion
from shipyard.signature import Signature

if TYPE_CHECKING:
    from shipyard.registry import Registry


@dataclass(frozen=True)
class ResolvedGraph:
    """A graph whose every step names one version, with those versions' verified local folders.

    What ``GraphRuntime.save`` stores: the graph's version holds a copy of each step's files,
    so it loads (and its sha256 covers them) wherever the version goes, batch and streams included.
    """

    graph: Graph
    versions: dict[str, ModelVersion]
    """Step name -> the version it runs."""
    folders: dict[str, Path]
    """Version digest -> its verified files."""
    signature: Signature


def resolve(graph: Graph, registry: Registry) -> ResolvedGraph:
    """Pin every step of ``graph`` to a version of ``registry`` and check the wiring (InvalidInput naming steps)."""
    versions: dict[str, ModelVersion] = {}
    for leaf in graph.leaves:
        try:
            versions[leaf.name] = registry.get(leaf.model)
        except ModelNotFound as exc:
            raise InvalidInput(f"step '{leaf.name}': {exc}", field=leaf.name, got=leaf.model) from None
    signature = derive_signature(graph, {k: v.signature for k, v in versions.items()},
                                 {k: v.ref for k, v in versions.items()})
    folders = {mv.digest: registry.fetch(mv) for mv in versions.values()}
    return ResolvedGraph(graph, versions, folders, signature)
