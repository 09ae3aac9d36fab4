"""Immutable model versions and alias moves: plain values the registry stores."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from shipyard.signature import Signature


def manifest_digest(files: dict[str, str]) -> str:
    """One sha256 for a whole version: over the sorted (path, file sha256) pairs."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode())
        h.update(b"\0")
        h.update(files[path].encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    """One registered version. Never changes once written."""

    name: str
    version: int
    flavor: str
    digest: str
    files: dict[str, str]
    """Relative path -> sha256 of every artifact file."""
    signature: Signature
    flavor_meta: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    """training_data fingerprint, git commit, parent version, source path."""
    packages: dict[str, str] = field(default_factory=dict)
    """Versions of Python and the relevant packages at registration."""
    created_at: str = ""
    artifact_uri: str = ""
    check_set: dict[str, Any] = field(default_factory=dict)
    """The stored check set: file, rows, where they came from (``shipyard.registry.checkset``);
    empty for versions registered before check sets were kept."""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def __hash__(self) -> int:  # the dict fields are not hashable; identity is name, version, digest
        return hash((self.name, self.version, self.digest))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "flavor": self.flavor,
            "digest": self.digest,
            "files": dict(self.files),
            "signature": self.signature.to_dict(),
            "flavor_meta": dict(self.flavor_meta),
            "description": self.description,
            "tags": dict(self.tags),
            "metrics": dict(self.metrics),
            "lineage": dict(self.lineage),
            "packages": dict(self.packages),
            "created_at": self.created_at,
            "artifact_uri": self.artifact_uri,
            "check_set": dict(self.check_set),
        }


@dataclass(frozen=True)
class AliasMove:
    """One entry of an alias's history."""

    name: str
    alias: str
    version: int | None
    previous: int | None
    action: str
    """'set', 'rollback' or 'delete'."""
    moved_at: str
    actor: str | None = None
    """Who moved it (the CLI records the OS user); None when not given or recorded before 0.2."""
    note: str | None = None
    """Why, when the mover said: the promotion gates' outcome (``gates passed``, ``gates failed: ...; forced``)."""
