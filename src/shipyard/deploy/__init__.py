"""Deploy targets: a container image, a Compose project and Kubernetes manifests for a registered model.

``shipyard deploy docker|compose|k8s`` is the command line of this package. The generators are pure
(``docker``, ``compose``, ``kubernetes``: a ``DeploySpec`` in, text or plain data out); ``plan`` reads the
registry, measures, and writes the files; ``replicas`` refuses settings that keep state on one machine.
"""

from __future__ import annotations

from shipyard.deploy.plan import Generated, Measured, build_spec, measure, write_compose, write_docker, write_kubernetes
from shipyard.deploy.replicas import ReplicaProblem, check_replicable, replica_problems
from shipyard.deploy.spec import BatchJob, DeploySpec, StreamJob

__all__ = [
    "BatchJob",
    "DeploySpec",
    "Generated",
    "Measured",
    "ReplicaProblem",
    "StreamJob",
    "build_spec",
    "check_replicable",
    "measure",
    "replica_problems",
    "write_compose",
    "write_docker",
    "write_kubernetes",
]
