"""Running a planned sweep on this machine: comparison group by comparison group, in a worker
subprocess (bench.worker) timed by the one engine (bench.timing), every record appended to
OUT/records.jsonl as its group ends (docs/bench.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import presets
from .measure import FLOP_CONVENTIONS, FLOP_NAMES, Case, Options
from .planning import comparison_groups, done_keys, repair_torn_tail, skip_reason
from .records import RECORDS_FILE, STATUSES, CaseRecord, append
from .timing import GroupTimer
from .worker import InProcess, Worker


def _progress(total: int) -> Any:
    from tqdm import tqdm

    quiet = not sys.stderr.isatty()
    return tqdm(total=total, disable=quiet, unit="case", dynamic_ncols=True, file=sys.stderr)


def _machine() -> str:
    from .environment import cpu_model

    return f"{cpu_model() or 'unknown CPU'} ({os.cpu_count()} cores)"


class _Workers:
    """The one live worker, for one thread count: a new count restarts it (BLAS libraries read
    their thread count when they load)."""

    def __init__(self, args: argparse.Namespace, log_path: str) -> None:
        self.args, self.log_path = args, log_path
        self.threads: int | None = None
        self.worker: Worker | InProcess | None = None

    def get(self, threads: int) -> Worker | InProcess:
        if self.worker is None or self.threads != threads:
            self.stop()
            self.threads = threads
            self.worker = (
                InProcess(threads, self.args.imports)
                if self.args.in_process
                else Worker(threads, self.args.imports, self.log_path)
            )
        return self.worker

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


def _probe(
    workers: _Workers, pending: list[Case], options: Options, no_peak: bool
) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
    """The environment and the GEMM peak per (device, threads), measured in the workers."""
    env: dict[str, Any] = {}
    peaks: dict[tuple[str, int], dict[str, Any]] = {}
    for threads in sorted({c.threads for c in pending}):
        worker = workers.get(threads)
        reply = worker.call(("env",), options.time_limit)
        if reply[0] == "ok" and not env:
            env = reply[1]
        for device in sorted({c.device for c in pending if c.threads == threads}):
            if no_peak:
                peaks[(device, threads)] = {"peak_gflops": None, "peak_source": None}
                continue
            reply = worker.call(("peak", device), options.time_limit)
            peaks[(device, threads)] = (
                reply[1]
                if reply[0] == "ok"
                else {"peak_gflops": None, "peak_source": None, "peak_error": reply[1]}
            )
    if not env:
        from .environment import collect

        env = collect()
    return env, peaks


def _run_record(
    args: argparse.Namespace,
    run_id: str,
    cases: list[Case],
    pending: list[Case],
    options: Options,
    preset: presets.Preset | None,
    env: dict[str, Any],
    peaks: dict[tuple[str, int], dict[str, Any]],
) -> dict[str, Any]:
    """The `run` record of this invocation (docs/bench.md, "Records")."""
    best = max((p.get("peak_gflops") or 0 for p in peaks.values()), default=None)
    conventions = {c.convention for c in cases} or {"full"}
    return {
        "type": "run",
        "run_id": run_id,
        "command": "run",
        "argv": sys.argv[1:],
        "preset": preset.name if preset else None,
        "cases": len(cases),
        "pending": len(pending),
        "settings": asdict(options),
        "optimizer_step": bool(args.optimizer_step),
        "imports": args.imports,
        "machine": _machine(),
        "shard": getattr(args, "shard_label", None),
        "isolation": "in-process" if args.in_process else "worker subprocess",
        # the FLOP conventions of this run's cases, by name: bench.measure.FLOP_CONVENTIONS
        "flop_convention": {
            name: FLOP_CONVENTIONS[name] for name in sorted({FLOP_NAMES[c] for c in conventions})
        },
        "peaks": [{"device": d, "threads": t, **p} for (d, t), p in peaks.items()],
        "peak_gflops": best or None,
        "environment": env,
    }


def run_sweep(
    cases: list[Case],
    options: Options,
    args: argparse.Namespace,
    preset: presets.Preset | None = None,
) -> dict[str, int]:
    """Measure `cases` group by group; returns the count of records per status."""
    from .environment import now

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(out)
    skip = done_keys(out, args.retry_failed) if args.resume else set()
    pending = [c for c in cases if c.key() not in skip]
    run_id = uuid.uuid4().hex[:12]
    started = getattr(args, "started", None) or time.monotonic()
    machine = _machine()
    shard = getattr(args, "shard_label", None)
    print(
        f"bench run: {len(cases)} cases, {len(cases) - len(pending)} already recorded, "
        f"{len(pending)} to measure -> {out / RECORDS_FILE}",
        file=sys.stderr,
    )
    workers = _Workers(args, str(out / "worker.log"))
    counts = {status: 0 for status in STATUSES}
    peaks: dict[tuple[str, int], dict[str, Any]] = {}

    def base(case: Case) -> CaseRecord:
        peak = peaks.get((case.device, case.threads)) or {}
        return CaseRecord(
            **asdict(case),
            run_id=run_id,
            peak_gflops=peak.get("peak_gflops"),
            peak_source=peak.get("peak_source"),
            time=now(),
            machine=machine,
            shard=shard,
            flop_convention=FLOP_NAMES[case.convention],
        )

    def write(record: CaseRecord) -> None:
        append(out, record)
        counts[record.status] += 1

    def out_of_budget() -> bool:
        return options.budget is not None and time.monotonic() - started > options.budget

    groups = comparison_groups(pending)
    done_groups, spent = 0, False
    try:
        env, found = _probe(workers, pending, options, args.no_peak)
        peaks.update(found)
        append(out, _run_record(args, run_id, cases, pending, options, preset, env, peaks))
        with _progress(len(pending)) as bar:
            for group in groups:
                if out_of_budget():
                    spent = True
                    break
                runnable = []
                for case in group:
                    reason = skip_reason(case)
                    if reason:
                        record = base(case)
                        record.status, record.error = "skipped", reason
                        write(record)
                        bar.update(1)
                    else:
                        runnable.append(case)
                if runnable:
                    worker = workers.get(runnable[0].threads)
                    timer = GroupTimer(
                        runnable,
                        worker,
                        options,
                        peaks,
                        base,
                        out_of_budget,
                        describe=lambda text: bar.set_description(text, refresh=True),
                    )
                    try:
                        timer.run()
                    finally:  # also when interrupted: the rounds measured so far are kept
                        for entry in timer.entries:
                            write(entry.record)
                            bar.update(1)
                    worker.call(("forget",), options.time_limit)
                done_groups += 1
    except KeyboardInterrupt:
        print(
            "interrupted: the records written so far are kept; run again with --resume",
            file=sys.stderr,
        )
        raise
    finally:
        workers.stop()
        left = [c for g in groups[done_groups:] for c in g]
        if spent and options.budget is not None:
            for case in left:
                record = base(case)
                record.status = "unmeasured"
                record.error = (
                    f"not started: the budget of {options.budget:g} s was spent; "
                    "run again with --resume to measure it"
                )
                write(record)
            print(
                f"budget of {options.budget:g} s spent: {len(left)} cases not started (recorded "
                "as unmeasured); run again with --resume to measure them",
                file=sys.stderr,
            )
    took = f" in {time.monotonic() - started:.0f} s"
    print(f"bench run: {tally(counts)}{took}; records in {out / RECORDS_FILE}", file=sys.stderr)
    return counts


def tally(counts: dict[str, int]) -> str:
    """'3 ok, 1 failed': the statuses that occurred (ok always), for the closing line."""
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "ok")
