"""``results.parquet``: one row per explained image, the run's table (schema in README.md).

Written with pyarrow alone (pandas, DuckDB or Spark read it as is), streamed in row groups so a
long run holds only the rows not yet written, and atomically: the file appears, whole, when the
run ends; a failed run leaves the previous file (or none). The schema version and the run's
settings are in the file's key-value metadata (``varrt.schema_version``, ``varrt.run`` as JSON).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "results.parquet"
>>> with ResultsWriter(path, {"method": "gradient"}) as writer:
...     writer.add({"path": "a.png", "stem": "a", "class_ids": [3], "class_names": ["cat"],
...                 "probabilities": [0.9], "logits": [4.0], "predicted_id": 3, "predicted_name": "cat",
...                 "predicted_probability": 0.9, "top_mass_share": [0.5], "peak_row": [1], "peak_col": [2],
...                 "kept_fraction": [0.1], "class_entropy": 0.2, "error": None})
>>> read_results(path).table.num_rows, read_results(path).run["method"]
(1, 'gradient')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from varrt.core.errors import VarrtError
from varrt.files import atomic_path

RESULTS_NAME = "results.parquet"
#: Bumped whenever a column is renamed, retyped or removed, or a row's meaning changes. 2: the
#: ``error`` column; a row with an error has only ``path``, ``stem`` and ``error`` (the rest null).
SCHEMA_VERSION = 2
VERSION_KEY = b"varrt.schema_version"
RUN_KEY = b"varrt.run"
_ROWS_PER_GROUP = 1024

SCHEMA = pa.schema([
    ("path", pa.string()),
    ("stem", pa.string()),
    ("class_ids", pa.list_(pa.int64())),
    ("class_names", pa.list_(pa.string())),
    ("probabilities", pa.list_(pa.float32())),
    ("logits", pa.list_(pa.float32())),
    ("predicted_id", pa.int64()),
    ("predicted_name", pa.string()),
    ("predicted_probability", pa.float32()),
    ("top_mass_share", pa.list_(pa.float32())),
    ("peak_row", pa.list_(pa.int32())),
    ("peak_col", pa.list_(pa.int32())),
    ("kept_fraction", pa.list_(pa.float32())),
    ("class_entropy", pa.float32()),
    ("error", pa.string()),  # why this image was not explained; null when it was
])


class ResultsWriter:
    """Collects rows (dicts keyed by ``SCHEMA``'s names) and writes them to ``path`` on success."""

    def __init__(self, path: Path, run: Mapping[str, Any]):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        metadata = {VERSION_KEY: str(SCHEMA_VERSION).encode(), RUN_KEY: json.dumps(dict(run), default=str).encode()}
        self.schema = SCHEMA.with_metadata(metadata)
        self._atomic: Any = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ResultsWriter:
        self._atomic = atomic_path(self.path)
        temporary = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(temporary, self.schema)
        return self

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self.count += 1
        if len(self.rows) >= _ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if error is None:
                self._flush()
        finally:
            if self._writer is not None:
                self._writer.close()
            self._atomic.__exit__(kind, error, trace)  # renames on success, removes on error


@dataclass
class Results:
    """A results file read back: the table, its schema version and the run's settings."""

    table: pa.Table
    version: int
    run: dict[str, Any]


def read_results(path: Path) -> Results:
    """Read ``results.parquet``; a VarrtError if it is missing, not Parquet or not varrt's."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise VarrtError(f"cannot read results table {path}: {error}") from error
    metadata = table.schema.metadata or {}
    if VERSION_KEY not in metadata:
        raise VarrtError(f"{path} is not a varrt results table (no {VERSION_KEY.decode()} metadata)")
    version = int(metadata[VERSION_KEY])
    if version > SCHEMA_VERSION:
        raise VarrtError(f"{path} has results schema {version}; this varrt reads up to {SCHEMA_VERSION}")
    return Results(table=table, version=version, run=json.loads(metadata.get(RUN_KEY, b"{}")))
