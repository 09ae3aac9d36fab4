"""The ``graph`` flavor: a registered version whose model is an inference graph of other versions.

The version folder holds ``graph.json`` (the graph, and the record of each step's
version) and ``models/DIGEST/`` (a copy of each step version's files), so the
graph's digest covers every file it runs and it loads wherever a version loads:
``shipyard serve``, ``shipyard.load``, batch jobs and stream consumers alike.

``predict`` runs the steps one after another in the calling thread. A server
instead calls ``run_graph`` with a host (``graphs/host.py``) that makes each step a
model call of its own on the request path: lane, batching, span, metrics.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from shipyard.errors import ModelFormatError
from shipyard.graphs.plan import SYNC, Host, Plan, drive
from shipyard.graphs.resolve import ResolvedGraph
from shipyard.graphs.spec import Explain, Graph
from shipyard.graphs.wiring import derive_signature
from shipyard.registry.loaded import LoadedModel
from shipyard.registry.model import ModelVersion
from shipyard.runtime.base import Arrays, Runtime
from shipyard.runtime.loader import get_runtime
from shipyard.signature import Signature

GRAPH_FILE = "graph.json"
MODELS = "models"


class GraphRuntime(Runtime):
    flavor = "graph"
    packages = ("numpy",)

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        return isinstance(obj, ResolvedGraph)

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        resolved: ResolvedGraph = obj
        for digest, folder in resolved.folders.items():
            shutil.copytree(folder, dest / MODELS / digest)
        document = {
            "graph": resolved.graph.to_dict(),
            "steps": {step: _version_record(mv) for step, mv in resolved.versions.items()},
        }
        (dest / GRAPH_FILE).write_text(json.dumps(document, indent=1, sort_keys=True))
        return {"steps": {step: mv.ref for step, mv in resolved.versions.items()}}

    @classmethod
    def lineage(cls, meta: dict[str, Any]) -> dict[str, Any]:
        return {"steps": dict(meta.get("steps") or {})}

    @classmethod
    def default_signature(cls, path: Path, meta: dict[str, Any]) -> Signature | None:
        graph, versions = _read(path)
        return derive_signature(graph, {k: v.signature for k, v in versions.items()},
                                {k: v.ref for k, v in versions.items()})

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> GraphRuntime:
        graph, versions = _read(path)
        loaded: dict[str, LoadedModel] = {}
        models: dict[str, LoadedModel] = {}
        try:
            for step, mv in versions.items():
                # one load per version; two versions may share files (one source file, two Step classes)
                if mv.ref not in loaded:
                    folder = path / MODELS / mv.digest
                    loaded[mv.ref] = LoadedModel(mv, get_runtime(mv.flavor).load(folder, mv.flavor_meta))
                models[step] = loaded[mv.ref]
            explainers = {node.name: _explainer(models[str(node.step)], path / MODELS)
                          for node in graph.steps if isinstance(node, Explain)}
        except BaseException:
            for m in loaded.values():
                m.close()
            raise
        return cls(Plan(graph, models, explainers))

    def predict(self, inputs: Arrays) -> Arrays:
        return drive(self.plan.run(inputs, SYNC))

    def run_graph(self, inputs: Arrays, host: Host, graph_name: str) -> Coroutine[Any, Any, Arrays]:
        """The graph run on a server: each step through ``host`` (the data plane's step calls)."""
        return self.plan.run(inputs, host, graph_name)

    def unload(self) -> None:
        self.plan.unload()


def _explainer(model: LoadedModel, models: Path) -> Any:
    """The explainer of an explain step (built at load: a tree explainer walks the trees once); the explained
    version's check set, copied with its files, is the background a linear or sampling explainer needs."""
    from shipyard.explain import Explainer  # shap loads only for graphs that explain
    from shipyard.registry import checkset

    mv = model.version
    background = None
    if mv.check_set.get("file") in mv.files:
        background = checkset.read(models / mv.digest, mv.signature, mv.check_set, mv.ref).inputs
    return Explainer(model, background)


def _version_record(mv: ModelVersion) -> dict[str, Any]:
    d = mv.to_dict()
    d.pop("artifact_uri", None)  # where the registry kept it; this copy lives beside graph.json
    return d


def _read(path: Path) -> tuple[Graph, dict[str, ModelVersion]]:
    try:
        document = json.loads((path / GRAPH_FILE).read_text())
        graph = Graph.from_dict(document["graph"])
        versions = {step: _version(rec) for step, rec in document["steps"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"the graph in {path} cannot be read: {exc}") from exc
    return graph, versions


def _version(rec: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=rec["name"], version=int(rec["version"]), flavor=rec["flavor"], digest=rec["digest"],
        files=dict(rec.get("files") or {}), signature=Signature.from_dict(rec["signature"]),
        flavor_meta=dict(rec.get("flavor_meta") or {}), description=rec.get("description", ""),
        tags=dict(rec.get("tags") or {}), lineage=dict(rec.get("lineage") or {}),
        created_at=rec.get("created_at", ""), check_set=dict(rec.get("check_set") or {}),
    )
