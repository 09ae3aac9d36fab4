"""Read small input files (samples, prediction inputs): CSV, JSON, JSON Lines, Parquet, NPY."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput


def read_data(path: Path) -> Any:
    """A DataFrame-like sample from a file, chosen by its suffix.

    CSV and Parquet give a pandas DataFrame when pandas is installed (a dict of
    columns otherwise, for CSV); JSON may hold records ``[{...}]``, columns
    ``{"col": [...]}`` or ``{"instances": [...]}``/``{"inputs": ...}``; NPY gives an array.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".parquet":
        pd = require("pandas", "sklearn")
        return pd.read_parquet(path)
    if suffix == ".csv":
        try:
            import pandas
        except ImportError:
            return _csv_columns(path)
        return pandas.read_csv(path)
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if suffix == ".json":
        return parse_json_data(path.read_text(), str(path))
    raise InvalidInput(f"cannot read '{path}': use .csv, .json, .jsonl, .parquet or .npy", field="file")


def parse_json_data(text: str, where: str = "input") -> Any:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where} is not valid JSON: {exc}", field="data") from None
    if isinstance(doc, dict) and "instances" in doc:
        return doc["instances"]
    if isinstance(doc, dict) and "inputs" in doc:
        return doc["inputs"]
    return doc


def _csv_columns(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InvalidInput(f"'{path}' has no rows", field="file")
    out: dict[str, np.ndarray[Any, Any]] = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        try:
            out[k] = np.array([float(v) for v in values])
        except ValueError:
            out[k] = np.array(values, dtype=object)
    return out
