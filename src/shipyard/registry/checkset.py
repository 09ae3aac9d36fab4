"""The check set kept with every version: the rows equivalence checks run on.

At registration a version keeps up to ``MAX_ROWS`` rows of its sample (or of
``check_data=``), validated by its signature, in ``check_set.npz``. The file is
written into the version folder before the digest is computed, so it is covered
by the sha256 manifest and never changes. Every check that compares a converted
artifact with its source (``shipyard export``, ``shipyard bundle``, the ONNX
serving twin, static-quantization calibration) runs on all of it. Above
``MAX_ROWS`` rows a seeded random choice is kept, in the original order, and the
version's record says so. A check on fewer than ``MIN_ROWS`` rows always says
why (``checked on 37 rows: the sample had only 37``): on a handful of rows label
agreement moves in big steps and a 0.95 threshold means little.

The format is a NumPy ``.npz`` (a zip of ``.npy`` files) that loads with
``allow_pickle=False``. Input ``k`` of the signature (signature order) is the
entry ``i{k}``. BYTES inputs, which NumPy holds only as objects (pickle), are
stored exactly as four entries: ``i{k}.data`` (the bytes of every element,
UTF-8 for text, concatenated, uint8), ``i{k}.offsets`` (int64, one more than
elements), ``i{k}.is_bytes`` (bool: the element was bytes, not text) and
``i{k}.shape``. Zip entries carry a fixed timestamp, so the same rows always
make the same bytes, and so the same digest.

Everything here is pure but ``write``/``read``: arrays in, arrays out.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, RegistryError
from shipyard.signature import Signature

CHECK_SET = "check_set.npz"
MAX_ROWS = 1000
"""Rows kept at most."""
MIN_ROWS = 100
"""Below this many rows every check says how few it ran on, and why."""
MAX_BYTES = 64 * 1024 * 1024
"""Rows are also capped so the file stays under this size (large image tensors)."""
SEED = 0
"""The seed of the row choice above ``MAX_ROWS``: the same sample keeps the same rows."""

Arrays = dict[str, np.ndarray[Any, Any]]
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class CheckSet:
    """The rows a version's equivalence checks run on."""

    inputs: Arrays
    """Named arrays in the version's signature, already validated by it."""
    note: str | None = None
    """Why there are fewer than ``MIN_ROWS`` rows; None when there are enough."""

    @property
    def rows(self) -> int:
        return rows_of(self.inputs)

    def checked_on(self) -> str:
        return checked_on(self.rows, self.note)


def checked_on(rows: int, note: str | None) -> str:
    """``checked on 500 rows``, or ``checked on 37 rows: the sample had only 37``."""
    return f"checked on {rows} rows" + (f": {note}" if note else "")


def rows_of(arrays: Arrays) -> int:
    return int(next(iter(arrays.values())).shape[0]) if arrays else 0


def named(signature: Signature, arrays: Arrays) -> Arrays:
    """An unnamed array sample ('input') takes the name of the model's one input."""
    if list(arrays) == ["input"] and len(signature.inputs) == 1:
        return {signature.inputs[0].name: arrays["input"]}
    return arrays


# -- choosing the rows --------------------------------------------------------------------


def choose(arrays: Arrays, source: str) -> tuple[Arrays, dict[str, Any]]:
    """The rows to keep and the record that describes them.

    Args:
        arrays: validated rows (every array has the same first dimension).
        source: ``sample`` or ``check_data``, for the record and the notes.

    Returns:
        The kept rows and ``{"file", "rows", "from", "of"}`` plus ``seed`` and
        ``sampled`` when a random choice was made, ``max_bytes`` when the size cap bit, and ``note``
        when fewer than ``MIN_ROWS`` rows are kept.
    """
    total = rows_of(arrays)
    per_row = max(1, _bytes_per_row(arrays))
    limit = max(1, min(MAX_ROWS, MAX_BYTES // per_row))
    info: dict[str, Any] = {"file": CHECK_SET, "rows": min(total, limit), "from": source, "of": total}
    if total > limit:
        keep = np.sort(np.random.default_rng(SEED).choice(total, size=limit, replace=False))
        arrays = {k: v[keep] for k, v in arrays.items()}
        info["seed"] = SEED
        info["sampled"] = f"{limit} of {total} rows chosen at random (seed {SEED}), in their original order"
        if limit < MAX_ROWS:
            info["max_bytes"] = MAX_BYTES
    note = few_rows_note(info)
    if note is not None:
        info["note"] = note
    return arrays, info


def few_rows_note(info: dict[str, Any]) -> str | None:
    """Why a check set recorded as ``info`` has fewer than ``MIN_ROWS`` rows, else None."""
    rows, total = int(info["rows"]), int(info["of"])
    if rows >= MIN_ROWS:
        return None
    what = "the check data" if info.get("from") == "check_data" else "the sample"
    if rows < total:
        return f"{what} had {total} rows, but only {rows} fit the {_size(MAX_BYTES)} check-set cap"
    return f"{what} had only {total}"


def _bytes_per_row(arrays: Arrays) -> int:
    rows = max(1, rows_of(arrays))
    total = 0
    for arr in arrays.values():
        if arr.dtype.kind == "O":
            head = arr.reshape(-1)[: 1000 * max(1, arr[:1].size)]
            sizes = [len(x) if isinstance(x, (str, bytes)) else 8 for x in head]
            total += int(np.mean(sizes) * arr[:1].size) + 16 if sizes else 16
        else:
            total += arr.nbytes // rows
    return total


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


# -- the file -------------------------------------------------------------------------------


def encode(signature: Signature, arrays: Arrays) -> bytes:
    """The ``.npz`` bytes of validated ``arrays`` (deterministic: same rows, same bytes)."""
    entries: dict[str, np.ndarray[Any, Any]] = {}
    for k, spec in enumerate(signature.inputs):
        arr = arrays[spec.name]
        if spec.datatype == "BYTES" or arr.dtype.kind in ("O", "U", "S"):
            entries.update(_encode_bytes(f"i{k}", arr, spec.name))
        else:
            entries[f"i{k}"] = np.ascontiguousarray(arr)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in entries.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    return out.getvalue()


def decode(signature: Signature, data: bytes) -> Arrays:
    """The arrays ``encode`` stored, named by the signature (raises ValueError if they do not fit)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        stored = {name: npz[name] for name in npz.files}
    out: Arrays = {}
    for k, spec in enumerate(signature.inputs):
        key = f"i{k}"
        if key in stored:
            out[spec.name] = stored[key]
        elif f"{key}.data" in stored:
            out[spec.name] = _decode_bytes(stored, key)
        else:
            raise ValueError(f"the check set has no rows for input '{spec.name}'")
    return out


def write(folder: Path, signature: Signature, arrays: Arrays) -> None:
    (folder / CHECK_SET).write_bytes(encode(signature, arrays))


def read(folder: Path, signature: Signature, info: dict[str, Any], ref: str) -> CheckSet:
    """The stored check set of a version whose files were verified, validated by its signature."""
    path = folder / str(info.get("file", CHECK_SET))
    try:
        inputs = signature.validate(decode(signature, path.read_bytes()))
    except (OSError, ValueError, zipfile.BadZipFile, InvalidInput) as exc:
        # the sha256 matched, so the file is as registered: a reader/writer mismatch, not tampering
        raise RegistryError(f"the check set of {ref} ('{path.name}') cannot be read: {exc}") from exc
    return CheckSet(inputs, few_rows_note({**info, "rows": rows_of(inputs)}))


def _encode_bytes(key: str, arr: np.ndarray[Any, Any], field: str) -> dict[str, np.ndarray[Any, Any]]:
    flat = arr.reshape(-1)
    chunks: list[bytes] = []
    is_bytes = np.zeros(flat.size, dtype=np.bool_)
    for i, x in enumerate(flat):
        if isinstance(x, (bytes, np.bytes_)):
            chunks.append(bytes(x))
            is_bytes[i] = True
        elif isinstance(x, str):
            chunks.append(x.encode("utf-8", "surrogatepass"))
        else:
            raise InvalidInput(
                f"input '{field}': the check set stores strings or bytes here, got {type(x).__name__}",
                field=field,
            )
    offsets = np.zeros(flat.size + 1, dtype=np.int64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    return {
        f"{key}.data": np.frombuffer(b"".join(chunks), dtype=np.uint8),
        f"{key}.offsets": offsets,
        f"{key}.is_bytes": is_bytes,
        f"{key}.shape": np.asarray(arr.shape, dtype=np.int64),
    }


def _decode_bytes(stored: dict[str, np.ndarray[Any, Any]], key: str) -> np.ndarray[Any, Any]:
    data = stored[f"{key}.data"].tobytes()
    offsets = stored[f"{key}.offsets"]
    is_bytes = stored[f"{key}.is_bytes"]
    shape = tuple(int(x) for x in stored[f"{key}.shape"])
    out = np.empty(len(offsets) - 1, dtype=object)
    for i in range(len(out)):
        chunk = data[offsets[i]:offsets[i + 1]]
        out[i] = chunk if is_bytes[i] else chunk.decode("utf-8", "surrogatepass")
    return out.reshape(shape)
