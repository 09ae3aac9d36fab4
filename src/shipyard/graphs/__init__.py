"""Inference graphs: steps (registered models and Python steps) wired as one registered, served name.

    graph = shipyard.Graph(["scaler@champion", "iris@champion",
                            Node("threshold", "cut:1", on_error="default", default={"label": 0})])
    shipyard.register(graph, name="iris-pipeline")

See ``spec.py`` for the shapes a graph takes, ``wiring.py`` for the checks made at
registration, ``runtime.py`` for how a graph version is stored and ``plan.py`` for how it runs.
"""

from __future__ import annotations

from shipyard.graphs.spec import Explain, FanOut, Graph, Node, Switch
from shipyard.graphs.step import Step

__all__ = ["Explain", "FanOut", "Graph", "Node", "Step", "Switch"]
