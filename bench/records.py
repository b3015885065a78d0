"""Result records: plain dicts, one JSON object per line, readable by pandas.

Every record has a `type`: "run" (the environment of one invocation), "case" (one sweep
measurement), "task" (one training run of a textbook task), "validate" (a verdict).
Records are appended and flushed as soon as they exist, so an interrupted run keeps them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

RECORDS_FILE = "records.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None; tuples become lists; numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append(out_dir: str | os.PathLike, record: dict, filename: str = RECORDS_FILE) -> None:
    """Append one record to out_dir/filename and push it to disk before returning."""
    if "type" not in record:
        raise ValueError(f"a record needs a 'type' field, got keys {sorted(record)}")
    path = Path(out_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_clean(record), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def iter_records(paths: Iterable[str | os.PathLike]) -> Iterator[dict]:
    """Records from directories (their *.jsonl files) or files. A torn last line is skipped."""
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"no records at {p}: expected a directory written by "
                                    "`python -m bench run/train` or a .jsonl file")
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        for file in files:
            with open(file, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut off by an interruption
                    record.setdefault("source", str(file))
                    yield record


def frame(paths: Iterable[str | os.PathLike], type: str) -> pd.DataFrame:
    """All records of one type as a DataFrame (empty if there are none)."""
    return pd.DataFrame([r for r in iter_records(paths) if r.get("type") == type])
