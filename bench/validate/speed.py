"""Speed: the candidate timed beside the built-in backends by the shared timing engine.

Each (shape, mode) is one comparison group measured by bench.timing.GroupTimer in an isolated
bench.worker.Worker: the correctness gate, then interleaved rounds of every backend until each
ratio to native has a narrow 95% CI or the group's time cap is reached (bench.measure.Options,
the defaults `bench run` uses). The worker registers the candidate by importing a generated
module. The result rows are bench.records.CaseRecord fields plus the shape's name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bench.measure import Case, Options
from bench.records import CaseRecord
from bench.timing import REFERENCE, GroupTimer

D2L_SHAPE = dict(input_size=28, hidden_size=256, batch=32, seq_len=35)
LARGE_SHAPE = dict(input_size=28, hidden_size=512, batch=32, seq_len=35)  # d2l with 2x hidden
SPEED_MODES = ("train", "infer", "generate")
MODULE_NAME = "cellbench_validate_candidate"

REGISTRATION = '''\
"""Written by `bench validate`: importing this registers the candidate (the timing worker
imports it)."""
import importlib
import cells
_module, _attr = {target!r}.split(":", 1)
_obj = importlib.import_module(_module)
for _part in _attr.split("."):
    _obj = getattr(_obj, _part)
cells.register({kind!r}, {name!r}, _obj, replace=True)
'''


def group(kind: str, backends: Sequence[str], mode: str, shape: dict, threads: int) -> list[Case]:
    """One comparison group: the backends at one shape and mode (generate: batch 1, as in
    `bench run`)."""
    batch = 1 if mode == "generate" else shape["batch"]
    return [
        Case(
            kind,
            backend,
            mode,
            shape["input_size"],
            shape["hidden_size"],
            batch=batch,
            seq_len=shape["seq_len"],
            threads=threads,
        )
        for backend in backends
    ]


def measure_speed(
    target: str,
    kind: str,
    name: str,
    out_dir: Path,
    shapes: dict[str, dict],
    backends: Sequence[str],
    modes: Sequence[str] = SPEED_MODES,
    options: Options | None = None,
    threads: int = 1,
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """Time the candidate `name` with `backends` (native is always added: the ratios are to it).

    Returns status ("ok", or "error" when nothing was measured), reason (problems, joined),
    rows (one per case: CaseRecord fields plus `shape`), candidate_errors (the candidate's rows
    that are not ok), and the shapes, options and threads used."""
    from bench.worker import Worker

    work = Path(out_dir) / "speed"
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{MODULE_NAME}.py").write_text(
        REGISTRATION.format(target=target, kind=kind, name=name), encoding="utf-8"
    )
    names = list(dict.fromkeys([REFERENCE, *backends, name]))
    options = options or Options()
    rows: list[dict] = []
    problems: list[str] = []
    sys.path.insert(0, str(work))  # the spawned worker starts with this process's sys.path
    worker = Worker(threads, [MODULE_NAME], str(work / "worker.log"))
    try:
        for shape_name, shape in shapes.items():
            for mode in modes:
                progress(f"  {shape_name} {mode}: {', '.join(names)}")
                cases = group(kind, names, mode, shape, threads)
                records = GroupTimer(
                    cases, worker, options, {}, lambda c: CaseRecord(**asdict(c))
                ).run()
                worker.call(("forget",), options.time_limit)
                rows += [dict(asdict(r), shape=shape_name) for r in records]
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        worker.stop()
        sys.path.remove(str(work))
    candidate_errors = [r for r in rows if r["backend"] == name and r["status"] != "ok"]
    return dict(
        status="error" if problems and not rows else "ok",
        reason="; ".join(problems),
        rows=rows,
        candidate_errors=candidate_errors,
        shapes=shapes,
        options=asdict(options),
        threads=threads,
    )
