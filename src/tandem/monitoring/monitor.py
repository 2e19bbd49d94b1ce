"""``tandem monitor``: a file of production rows against the reference statistics frozen in the
model's Bundle (:mod:`tandem.monitoring.drift`); the training data is never read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tandem.bundle.store import load_bundle
from tandem.data.readers import read_table
from tandem.data.schema import coerce_column
from tandem.errors import BundleError, DataError
from tandem.monitoring.drift import DatasetDrift, drift
from tandem.registry import Registry

__all__ = ["MonitorReport", "check_file"]


@dataclass(frozen=True)
class MonitorReport:
    model: str
    current: str
    rows: int
    result: DatasetDrift

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "current": self.current,
            "rows": self.rows,
            "q": self.result.q,
            "drifted": self.result.drifted,
            "drifted_columns": self.result.drifted_columns,
            "columns": [asdict(c) for c in self.result.columns],
        }


def check_file(
    registry: Registry, ref: str, current: str | Path, *, q: float = 0.05
) -> MonitorReport:
    """Drift of the rows in ``current`` (CSV, Parquet, JSONL or a folder of parts) against
    ``ref``'s reference statistics.

    Raises:
        DataError: the file lacks some of the model's input columns, or has no rows.
        BundleError: the Bundle was frozen without reference statistics.
    """
    if not 0 < q < 1:
        raise DataError(f"q must be between 0 and 1; got {q}")
    version = registry.get(ref)
    manifest = load_bundle(version.path, expected_digest=version.digest).manifest
    reference = manifest.details.get("reference")
    if not reference:
        raise BundleError(f"{version.ref} has no reference statistics; retrain it to monitor it")
    table = read_table(current)
    missing = [c.name for c in manifest.inputs if c.name not in table.column_names]
    if missing:
        raise DataError(
            f"{current} lacks the model's input column(s) {missing}: monitor the rows the model "
            "is given, with the names it was trained on"
        )
    if table.num_rows == 0:
        raise DataError(f"{current} has no rows to compare")
    columns = {c.name: coerce_column(c, table.column(c.name)) for c in manifest.inputs}
    result = drift({n: reference[n] for n in columns if n in reference}, columns, q=q)
    return MonitorReport(version.ref, str(current), table.num_rows, result)
