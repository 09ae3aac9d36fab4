"""Artifact files: a local folder by default, any fsspec filesystem in production.

Layout: ``ROOT/NAME/DIGEST/<files>``, where DIGEST is the version's manifest
digest, so identical content is stored once and a path never changes meaning.
Uploads go to a temporary name first and are renamed when complete. Every
fetch re-hashes the files against the manifest recorded in the database.

An http(s) store (fsspec's HTTP filesystem, read-only in practice) is the one
way shipyard loads model files from a URL: its host must be allowed by
``security.model_url_hosts``, checked when the store opens and before each download.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec

from shipyard.errors import ArtifactIntegrityError, ConfigError, InvalidInput
from shipyard.security.egress import HostAllowList

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by its POSIX relative path."""
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return out


class ArtifactStore:
    """Content-addressed version folders on an fsspec filesystem."""

    def __init__(self, url: str, cache_dir: Path, url_hosts: Sequence[str] = ()) -> None:
        self.url = url.rstrip("/")
        # fsspec chains ("simplecache::https://...") reach the network through their http(s) link
        self._http_urls = [p for p in self.url.split("::") if p.lower().startswith(("http://", "https://"))]
        self._egress = HostAllowList(url_hosts, setting="security.model_url_hosts")
        self._check_hosts()
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.cache_dir = cache_dir

    def _check_hosts(self) -> None:
        for url in self._http_urls:
            try:
                self._egress.check_url(url, what="artifact store URL", field="artifacts")
            except InvalidInput as exc:
                raise ConfigError(exc.message) from None

    def uri(self, name: str, digest: str) -> str:
        return f"{self.url}/{name}/{digest}"

    def put(self, local: Path, name: str, digest: str) -> str:
        """Upload a finished version folder; a no-op if that digest is already stored."""
        final = f"{self.root}/{name}/{digest}"
        tmp = f"{self.root}/{name}/.tmp-{uuid.uuid4().hex}"
        if self.is_local:
            if self.fs.exists(final):
                return self.uri(name, digest)
            self.fs.makedirs(f"{self.root}/{name}", exist_ok=True)
            shutil.copytree(local, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                # another process stored the same digest first: identical content, keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            return self.uri(name, digest)
        # Object stores cannot rename a folder atomically. Moving our folder onto one that a
        # concurrent writer of the same digest has just created would nest it inside
        # (DIGEST/.tmp-*/...), and that extra file breaks the digest for every version. Same
        # digest means same bytes, so move file by file instead; and complete a folder that a
        # crashed upload left half-written rather than trusting that it exists.
        names = [p.relative_to(local).as_posix() for p in sorted(local.rglob("*")) if p.is_file()]
        if all(self.fs.exists(f"{final}/{rel}") for rel in names):
            return self.uri(name, digest)
        self.fs.makedirs(f"{self.root}/{name}", exist_ok=True)
        self.fs.put(str(local), tmp, recursive=True)
        for rel in names:
            self.fs.makedirs(posixpath.dirname(f"{final}/{rel}"), exist_ok=True)
            self.fs.mv(f"{tmp}/{rel}", f"{final}/{rel}")
        with contextlib.suppress(FileNotFoundError):  # object stores drop an emptied "folder"
            self.fs.rm(tmp, recursive=True)
        return self.uri(name, digest)

    def fetch(self, name: str, version: int, digest: str, files: dict[str, str]) -> Path:
        """A local folder holding the version's files, each checked against its sha256."""
        if self.is_local:
            folder = Path(f"{self.root}/{name}/{digest}")
        else:
            folder = self.cache_dir / name / digest
            if not folder.exists():
                self._check_hosts()  # again: what the name resolves to may have changed since
                tmp = self.cache_dir / name / f".tmp-{uuid.uuid4().hex}"
                tmp.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get(f"{self.root}/{name}/{digest}/", str(tmp), recursive=True)
                try:
                    os.rename(tmp, folder)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)
        try:
            verify(folder, name, version, files)
        except ArtifactIntegrityError:
            if not self.is_local:
                # never keep a cached copy that failed: the next fetch downloads afresh,
                # so a repaired remote object (or a cleaned-up cache) can load again
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder


def verify(folder: Path, name: str, version: int, files: dict[str, str]) -> None:
    """Raise ArtifactIntegrityError unless ``folder`` holds exactly ``files`` with those hashes.

    Bytecode caches are never part of a version, so they are deleted first: Python would
    run a planted ``__pycache__/*.pyc`` (an unchecked-hash one needs no matching source)
    instead of the verified ``.py`` beside it. Any that cannot be deleted fail the check.
    """
    for cache in sorted(folder.rglob("__pycache__"), reverse=True):
        if cache.is_dir():
            shutil.rmtree(cache, ignore_errors=True)
    for rel, expected in files.items():
        p = folder / rel
        if not p.is_file():
            raise ArtifactIntegrityError(name, version, rel, expected, None)
        actual = sha256_file(p)
        if actual != expected:
            raise ArtifactIntegrityError(name, version, rel, expected, actual)
    present = hash_tree_names(folder)
    extra = sorted(present - set(files))
    if extra:
        raise ArtifactIntegrityError(name, version, extra[0], None, "unexpected")


def hash_tree_names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def describe(files: dict[str, str], folder: Path | None = None) -> list[dict[str, Any]]:
    return [{"path": k, "sha256": v} for k, v in sorted(files.items())]
