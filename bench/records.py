"""Result records: one JSON object per line, readable by pandas, with one schema per record type.

Every record has a `type`: "run" (the environment of one invocation), "case" (one sweep
measurement, schema `CaseRecord`), "task" (one training run of a textbook task), "validate" (a
verdict). Records are appended and fsynced as soon as they exist, so an interrupted run keeps
them. Every command reads them with `iter_records` / `read_cases`, which survive bad lines: a line
that is not a JSON object, or a case record with a missing or mistyped field, is skipped with a
warning naming the file and line, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from .measure import CASE_FIELDS, Case

RECORDS_FILE = "records.jsonl"
# unsupported: the backend declares it cannot do this (cells.errors.Unsupported), e.g. ORT train
STATUSES = ("ok", "incorrect", "failed", "skipped", "unmeasured", "unsupported")
# why the rounds of a case stopped: its ratio CI was narrow enough, the group's time cap, the
# round cap, the run's budget, a fault in another case of its group, or an interruption
STOP_REASONS = (
    "ci",
    "time_cap",
    "max_rounds",
    "budget",
    "group_fault",
    "interrupted",
    "no_reference",
)


@dataclass
class CaseRecord(Case):
    """One case of a sweep: its spec (the fields of `bench.measure.Case`, whose tuple is the
    case's identity, `key()`), its per-round times and the figures derived from them.

    Times are seconds per call. `ratio_to_native` is the median over rounds of
    native's round time / this backend's round time (> 1: faster than torch.nn), with
    `ratio_ci95` a percentile-bootstrap 95% interval over rounds (bench.stats).
    """

    # --- outcome
    type: str = "case"
    run_id: str | None = None
    status: str = "ok"  # one of STATUSES
    error: str | None = None  # why it is not ok (one line)
    failed_round: int | None = None  # 1-based timing round in which a fault happened
    # --- correctness gate (bench.gate), run once per module before any timing
    check_s: float | None = None
    check_error: float | None = None  # worst relative error / tolerance (<= 1 passes)
    # --- per-round times and how the rounds stopped
    round_times: list = field(default_factory=list)  # median seconds per call, one per round
    rounds: int = 0
    repeats: int = 0  # timed blocks over all rounds
    stop_reason: str | None = None  # one of STOP_REASONS
    # --- derived figures
    median_s: float | None = None  # median of round_times
    iqr_s: float | None = None
    iqr_rel: float | None = None
    noisy: bool = False
    tokens_per_s: float | None = None
    flops: float | None = None
    gflops: float | None = None
    pct_of_peak: float | None = None
    ratio_to_native: float | None = None
    ratio_ci95: list | None = None  # [low, high]
    ratio_rounds: int | None = None  # rounds paired with native's
    flop_convention: str | None = None  # a bench.measure.FLOP_CONVENTIONS key
    first_call_s: float | None = None
    peak_mem_bytes: int | None = None
    mem_method: str | None = None
    param_count: int | None = None
    peak_gflops: float | None = None
    peak_source: str | None = None
    wall_s: float | None = None
    time: str | None = None
    machine: str | None = None
    shard: str | None = None

    def to_dict(self) -> dict:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> CaseRecord:
        """A record from its JSON object; raises RecordError naming the first bad field."""
        known = {f.name: f for f in fields(cls)}
        for name in REQUIRED:
            if data.get(name) is None:
                raise RecordError(f"case record without {name!r}")
        if data["status"] not in STATUSES:
            raise RecordError(f"status {data['status']!r} is not one of {', '.join(STATUSES)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known or value is None:
                continue
            expected = _TYPES[name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if expected is bool and not isinstance(value, bool):
                raise RecordError(f"field {name!r} should be true or false, got {value!r}")
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise RecordError(f"field {name!r} should be {expected.__name__}, got {value!r}")
            values[name] = value
        return cls(**values)


SPEC_FIELDS = CASE_FIELDS
REQUIRED = ("kind", "backend", "mode", "input_size", "hidden_size", "status")
_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool, "list": list}[
        str(f.type).removesuffix(" | None")
    ]
    for f in fields(CaseRecord)
}


class RecordError(ValueError):
    """A line that is not a valid record."""


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


def append(
    out_dir: str | os.PathLike, record: dict | CaseRecord, filename: str = RECORDS_FILE
) -> None:
    """Append one record to out_dir/filename and push it to disk before returning."""
    if isinstance(record, CaseRecord):
        record = record.to_dict()
    if "type" not in record:
        raise ValueError(f"a record needs a 'type' field, got keys {sorted(record)}")
    path = Path(out_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_clean(record), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


_warned: set[str] = set()


def warn(message: str) -> None:
    """Print a warning about a bad line once per process (several readers may meet it)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def _lines(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, int, bytes]]:
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(
                f"no records at {p}: expected a directory written by "
                "`python -m bench run/train` or a .jsonl file"
            )
        for file in sorted(p.glob("*.jsonl")) if p.is_dir() else [p]:
            with open(file, "rb") as f:
                for number, line in enumerate(f, 1):
                    yield str(file), number, line


def iter_records(
    paths: Iterable[str | os.PathLike], on_bad: Callable[[str], None] = warn
) -> Iterator[dict]:
    """Every record (a JSON object with a string `type`) of directories (their *.jsonl files) or
    files. Any other line is skipped with one call of `on_bad` naming its file and line; a line
    cut off by an interruption is skipped the same way. Each record gets `source` = its file."""
    for file, number, raw in _lines(paths):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            on_bad(f"{file}:{number}: skipped, not a JSON record ({type(exc).__name__})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("type"), str):
            on_bad(
                f"{file}:{number}: skipped, expected a JSON object with a 'type', got "
                f"{type(record).__name__ if not isinstance(record, dict) else 'an object without type'}"
            )
            continue
        record.setdefault("source", file)
        record["_line"] = number
        yield record


def read_cases(
    paths: Iterable[str | os.PathLike], on_bad: Callable[[str], None] = warn
) -> list[CaseRecord]:
    """The valid case records of `paths`; each invalid one is skipped with a warning."""
    cases = []
    for record in iter_records(paths, on_bad):
        if record["type"] != "case":
            continue
        try:
            cases.append(CaseRecord.from_dict(record))
        except RecordError as exc:
            on_bad(f"{record['source']}:{record['_line']}: skipped, {exc}")
    return cases


def frame(paths: Iterable[str | os.PathLike], type: str) -> pd.DataFrame:
    """All records of one type as a DataFrame (empty if there are none); case records are
    validated and carry every field of CaseRecord."""
    if type == "case":
        return pd.DataFrame([c.to_dict() for c in read_cases(paths)])
    return pd.DataFrame([r for r in iter_records(paths) if r.get("type") == type])
