"""The artifact store on a non-local fsspec filesystem (in-memory, so no sockets)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from shipyard.errors import ArtifactIntegrityError
from shipyard.registry.artifacts import ArtifactStore, hash_tree
from shipyard.registry.model import manifest_digest


@pytest.fixture
def bucket() -> Iterator[str]:
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    try:
        yield name
    finally:
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


@pytest.fixture
def version_folder(tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """A finished version folder with a nested file, its manifest and digest."""
    local = tmp_path / "version"
    (local / "sub").mkdir(parents=True)
    (local / "model.bin").write_bytes(b"\x00weights" * 100)
    (local / "sub" / "meta.json").write_text('{"a": 1}')
    files = hash_tree(local)
    return local, files, manifest_digest(files)


def remote_files(bucket: str) -> list[str]:
    return sorted(fsspec.filesystem("memory").find(f"/{bucket}"))


def test_upload_stores_exactly_the_files_under_the_digest(
    bucket: str, tmp_path: Path, version_folder: tuple[Path, dict[str, str], str]
) -> None:
    local, files, digest = version_folder
    store = ArtifactStore(f"memory://{bucket}/artifacts", tmp_path / "cache")

    uri = store.put(local, "m", digest)

    assert uri == f"memory://{bucket}/artifacts/m/{digest}"
    assert remote_files(bucket) == sorted(f"/{bucket}/artifacts/m/{digest}/{rel}" for rel in files)
    fetched = store.fetch("m", 1, digest, files)
    assert fetched == tmp_path / "cache" / "m" / digest
    assert hash_tree(fetched) == files


def test_a_concurrent_upload_of_the_same_digest_does_not_nest_folders(
    bucket: str,
    tmp_path: Path,
    version_folder: tuple[Path, dict[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local, files, digest = version_folder
    url = f"memory://{bucket}/artifacts"
    ours, theirs = ArtifactStore(url, tmp_path / "c1"), ArtifactStore(url, tmp_path / "c2")
    fs = fsspec.filesystem("memory")
    real_mv = fs.mv

    def other_writer_finishes_first(*args: Any, **kwargs: Any) -> Any:
        # the other process completes its whole upload between our checks and our move
        monkeypatch.setattr(fs, "mv", real_mv)
        theirs.put(local, "m", digest)
        return real_mv(*args, **kwargs)

    monkeypatch.setattr(fs, "mv", other_writer_finishes_first)
    ours.put(local, "m", digest)

    assert remote_files(bucket) == sorted(f"/{bucket}/artifacts/m/{digest}/{rel}" for rel in files)
    assert hash_tree(ours.fetch("m", 1, digest, files)) == files


def test_a_half_written_upload_is_completed_by_the_next_one(
    bucket: str, tmp_path: Path, version_folder: tuple[Path, dict[str, str], str]
) -> None:
    local, files, digest = version_folder
    store = ArtifactStore(f"memory://{bucket}/artifacts", tmp_path / "cache")
    store.put(local, "m", digest)
    fsspec.filesystem("memory").rm_file(f"/{bucket}/artifacts/m/{digest}/sub/meta.json")

    store.put(local, "m", digest)

    assert hash_tree(store.fetch("m", 1, digest, files)) == files


def test_a_cached_copy_that_fails_verification_is_downloaded_again(
    bucket: str, tmp_path: Path, version_folder: tuple[Path, dict[str, str], str]
) -> None:
    local, files, digest = version_folder
    store = ArtifactStore(f"memory://{bucket}/artifacts", tmp_path / "cache")
    store.put(local, "m", digest)
    cached = store.fetch("m", 3, digest, files)
    (cached / "model.bin").write_bytes(b"changed")

    with pytest.raises(ArtifactIntegrityError) as info:
        store.fetch("m", 3, digest, files)
    assert (info.value.version, info.value.path) == (3, "model.bin")

    assert hash_tree(store.fetch("m", 3, digest, files)) == files
