"""`python -m bench run`: measure a grid of kinds x backends x modes x shapes; one record per case.

    python -m bench run --preset quick --out runs/latest --resume
    python -m bench run --kinds lstm --backends naive,native --batch 16,64 --out runs/mine
    python -m bench run --import mypkg.backends --kinds lstm --backends mine,native --out runs/x

Comma lists form a cartesian grid. Each case runs in a worker subprocess (see bench/worker.py)
and its record is appended to OUT/records.jsonl as soon as it is finished; a case that raises,
dies or exceeds --time-limit becomes a `failed` record and the sweep goes on. `--resume` skips
the cases that already have a record in OUT. See docs/bench.md for every field.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import time
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterable, Optional

from . import presets
from .measure import DTYPES, FLOP_CONVENTION, MODES, NOISE_THRESHOLD, Case, Options, case_key, pooled
from .records import RECORDS_FILE, append, iter_records

RESULT_FIELDS = ("median_s", "iqr_s", "iqr_rel", "noisy", "repeats", "rounds", "tokens_per_s", "flops",
                 "gflops", "pct_of_peak", "first_call_s", "peak_mem_bytes", "mem_method", "param_count")
DEFAULTS = {"min_run_time": 0.1, "min_repeats": 5, "warmup": 2, "time_limit": 300.0, "budget": None,
            "rounds": 5}


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2, before any measurement."""


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if kind is int:
            try:
                values = [int(t) for t in items]
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
            if any(v <= 0 for v in values):
                raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
            return values
        return items
    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    g = parser.add_argument_group("what to measure (comma lists form a grid; each replaces the preset's value)")
    g.add_argument("--preset", help=f"named sweep: {', '.join(presets.PRESETS)} (default: the d2l size "
                                    "for all kinds, backends and modes)")
    g.add_argument("--kinds", type=_csv(str), help="rnn,gru,lstm")
    g.add_argument("--backends", type=_csv(str), help="default: every available backend of each kind")
    g.add_argument("--modes", type=_csv(str), help=f"{','.join(MODES)}")
    g.add_argument("--input-size", type=_csv(int))
    g.add_argument("--hidden-size", type=_csv(int))
    g.add_argument("--num-layers", type=_csv(int))
    g.add_argument("--batch", type=_csv(int), help="ignored by generate mode, which always uses batch 1")
    g.add_argument("--seq-len", type=_csv(int))
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu, or the preset's)")
    g.add_argument("--dtype", type=_csv(str), help=f"{','.join(DTYPES)} (default float32)")
    g.add_argument("--threads", type=_csv(int), help="torch and numba threads (default: all cores)")
    g.add_argument("--optimizer-step", action="store_true",
                   help="train mode includes a plain SGD step (default: forward + backward only)")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (here and in the worker), e.g. to cells.register backends")
    o = parser.add_argument_group("how")
    o.add_argument("--out", default="runs/latest", help="record directory (default runs/latest)")
    o.add_argument("--resume", action="store_true", help="skip cases that already have a record in --out")
    o.add_argument("--retry-failed", action="store_true", help="with --resume, measure failed cases again")
    o.add_argument("--time-limit", type=float, help="seconds per case, compilation included (default 300)")
    o.add_argument("--budget", type=float,
                   help="start no new case after this many seconds; the rest can be run with --resume")
    o.add_argument("--rounds", type=int,
                   help="timed rounds per case, interleaved with the other backends of the same "
                        "shape (default 5; 1 = one window per case)")
    o.add_argument("--min-run-time", type=float, help="seconds of timed calls per case and round "
                                                      "(default 0.1)")
    o.add_argument("--min-repeats", type=int, help="at least this many timed blocks per case (default 5)")
    o.add_argument("--warmup", type=int, help="untimed calls after the first call (default 2)")
    o.add_argument("--noise-threshold", type=float, default=NOISE_THRESHOLD,
                   help=f"flag a case noisy when IQR/median exceeds this (default {NOISE_THRESHOLD})")
    o.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    o.add_argument("--no-peak", action="store_true", help="skip the GEMM peak measurement")
    o.add_argument("--in-process", action="store_true",
                   help="run cases in this process: no isolation, no time limit (debugging)")
    o.add_argument("--list", action="store_true", help="print the cases and exit without measuring")
    parser.set_defaults(func=main)


# --- planning ----------------------------------------------------------------------------------
def _check_names(values: Iterable[str], valid: Iterable[str], what: str) -> None:
    valid = list(valid)
    for v in values:
        if v not in valid:
            raise UsageError(f"unknown {what} {v!r}; valid: {', '.join(valid)}")


def check_device(device: str) -> None:
    import torch
    if device == "cpu":
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} is not available here (torch.cuda.is_available() is "
                             "False); valid: cpu")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} does not exist; valid: cpu, "
                             + ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count())))
        return
    raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")


def known_backends(kind: str) -> list[str]:
    import cells
    return list(dict.fromkeys(cells.backends(kind) + list(cells.unavailable(kind))))


def plan(args: argparse.Namespace) -> tuple[list[Case], dict, Optional[presets.Preset]]:
    """The cases to run (deduplicated, in order) and the settings; raises UsageError."""
    import cells
    from cells.kinds import KINDS
    from .environment import available_cores

    preset = presets.get(args.preset) if args.preset else None
    if args.kinds:
        _check_names(args.kinds, KINDS, "kind")
    if args.modes:
        _check_names(args.modes, MODES, "mode")
    dtypes = args.dtype or ["float32"]
    _check_names(dtypes, DTYPES, "dtype")
    device = args.device or (preset.device if preset else "cpu")
    check_device(device)
    if args.backends:
        everything = sorted({b for k in (args.kinds or KINDS) for b in known_backends(k)})
        for b in args.backends:
            if b not in everything:
                raise UsageError(f"unknown backend {b!r}; valid: {', '.join(everything)}")
    threads = args.threads or [available_cores()]
    blocks = preset.blocks if preset else (presets.D2L,)
    blocks = [presets.override(b, kinds=args.kinds, backends=args.backends, modes=args.modes,
                               input_size=args.input_size, hidden_size=args.hidden_size,
                               num_layers=args.num_layers, batch=args.batch, seq_len=args.seq_len)
              for b in blocks]
    cases: dict[tuple, Case] = {}
    for block in blocks:  # mode-major, so that a sweep cut short by --budget has every kind
        for mode, kind in itertools.product(block.modes, block.kinds):
            names = list(block.backends) if block.backends is not None else cells.backends(kind)
            names = [n for n in names if n not in block.exclude]
            for backend, h, i, layers, batch, t, dtype, n in itertools.product(
                    names, block.hidden_size, block.input_size, block.num_layers,
                    block.batch, block.seq_len, dtypes, threads):
                case = Case(kind, backend, mode, h if i is None else i, h, layers,
                            1 if mode == "generate" else batch, t, device, dtype, n,
                            bool(args.optimizer_step) and mode == "train")
                cases.setdefault(case.key(), case)
    ordered = sorted(cases.values(), key=lambda c: c.threads)  # stable: one worker per thread count
    settings = dict(DEFAULTS)
    if preset:
        settings.update(preset.settings)
    for name in DEFAULTS:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if not isinstance(settings["rounds"], int) or settings["rounds"] < 1:
        raise UsageError(f"--rounds must be at least 1, got {settings['rounds']}")
    return ordered, settings, preset


def comparison_groups(cases: list[Case]) -> list[list[Case]]:
    """Cases that differ only in the backend, together, in order of first appearance: their
    timing rounds are interleaved, so that a slow spell of the machine hits all of them."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.key()[:1] + case.key()[2:], []).append(case)
    return list(groups.values())


def done_keys(out_dir: Path, retry_failed: bool = False) -> set[tuple]:
    """Keys of the cases already recorded in out_dir (failed ones too, unless retry_failed)."""
    if not (out_dir / RECORDS_FILE).exists():
        return set()
    keep = {"ok", "skipped"} if retry_failed else {"ok", "skipped", "failed"}
    return {case_key(r) for r in iter_records([out_dir / RECORDS_FILE])
            if r.get("type") == "case" and r.get("status") in keep}


def repair_torn_tail(out_dir: Path) -> None:
    """End a last line cut off by an interruption, so the next record starts on its own line
    (iter_records then skips the torn line instead of losing the new record too)."""
    path = out_dir / RECORDS_FILE
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def skip_reason(case: Case) -> Optional[str]:
    """Why a requested case cannot run here (None if it can)."""
    import cells
    if case.backend in cells.backends(case.kind):
        return None
    reasons = cells.unavailable(case.kind)
    if case.backend in reasons:
        return f"backend {case.backend!r} is unavailable: {reasons[case.backend]}"
    return f"backend {case.backend!r} is not registered for kind {case.kind!r}"


def case_record(case: Case, run_id: str, status: str, result: Optional[dict] = None,
                error: Optional[str] = None, peak: Optional[dict] = None, wall_s: Optional[float] = None) -> dict:
    from .environment import now
    record = {"type": "case", "run_id": run_id, **asdict(case), "status": status, "error": error}
    result = result or {}
    for name in RESULT_FIELDS:
        record[name] = result.get(name)
    record["peak_gflops"] = (peak or {}).get("peak_gflops")
    record["peak_source"] = (peak or {}).get("peak_source")
    record["wall_s"] = wall_s
    record["time"] = now()
    return record


# --- running -----------------------------------------------------------------------------------
def _progress(total: int):
    from tqdm import tqdm
    quiet = not sys.stderr.isatty()
    return tqdm(total=total, disable=quiet, unit="case", dynamic_ncols=True, file=sys.stderr)


def _import_plugins(imports: list[str]) -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in imports:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise UsageError(f"--import {name}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def main(args: argparse.Namespace) -> int:
    args.started = time.monotonic()  # the --budget counts from here: imports and planning included
    try:
        _import_plugins(args.imports)
        cases, settings, preset = plan(args)
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for case in cases:
            print(case.label())
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    return run_sweep(cases, settings, args, preset)


def run_sweep(cases: list[Case], settings: dict, args: argparse.Namespace,
              preset: Optional[presets.Preset] = None) -> int:
    from .worker import InProcess, Worker
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(out)
    skip = done_keys(out, args.retry_failed) if args.resume else set()
    pending = [c for c in cases if c.key() not in skip]
    # --min-repeats counts the pooled blocks: each round tops up to its share (at least 2)
    per_round = max(2, -(-settings["min_repeats"] // settings["rounds"])) if settings["rounds"] > 1 \
        else settings["min_repeats"]
    options = Options(min_run_time=settings["min_run_time"], min_repeats=per_round,
                      warmup=settings["warmup"], noise_threshold=args.noise_threshold,
                      memory=not args.no_memory)
    run_id = uuid.uuid4().hex[:12]
    started = getattr(args, "started", None) or time.monotonic()
    log_path = str(out / "worker.log")
    print(f"bench run: {len(cases)} cases, {len(cases) - len(pending)} already recorded, "
          f"{len(pending)} to measure -> {out / RECORDS_FILE}", file=sys.stderr)

    workers: dict[int, object] = {}

    def worker_for(threads: int):
        if threads not in workers:
            for w in workers.values():
                w.stop()
            workers.clear()
            workers[threads] = InProcess(threads, args.imports) if args.in_process else \
                Worker(threads, args.imports, log_path)
        return workers[threads]

    counts = {"ok": 0, "failed": 0, "skipped": 0}
    kept: dict[tuple, tuple] = {}  # measured cases of the current group with more rounds to come
    finish = None
    try:
        # the environment and the GEMM peak, measured where the cases run, per thread count
        peaks: dict[tuple[str, int], dict] = {}
        env: dict = {}
        for threads in sorted({c.threads for c in pending}):
            w = worker_for(threads)
            reply = w.call(("env",), settings["time_limit"])
            if reply[0] == "ok" and not env:
                env = reply[1]
            for device in sorted({c.device for c in pending if c.threads == threads}):
                if args.no_peak:
                    peaks[(device, threads)] = {"peak_gflops": None, "peak_source": None}
                    continue
                reply = w.call(("peak", device), settings["time_limit"])
                peaks[(device, threads)] = reply[1] if reply[0] == "ok" else \
                    {"peak_gflops": None, "peak_source": None, "peak_error": reply[1]}
        run = {"type": "run", "run_id": run_id, "command": "run", "argv": sys.argv[1:],
               "preset": preset.name if preset else None, "cases": len(cases), "pending": len(pending),
               "settings": settings, "noise_threshold": args.noise_threshold,
               "optimizer_step": bool(args.optimizer_step), "imports": args.imports,
               "isolation": "in-process" if args.in_process else "worker subprocess",
               "flop_convention": FLOP_CONVENTION,
               "peaks": [{"device": d, "threads": t, **p} for (d, t), p in peaks.items()],
               "peak_gflops": max((p.get("peak_gflops") or 0 for p in peaks.values()), default=None) or None,
               "environment": env}
        if not env:
            from .environment import collect
            run["environment"] = collect()
        append(out, run)

        rounds = settings["rounds"]

        def out_of_budget() -> bool:
            return settings["budget"] is not None and time.monotonic() - started > settings["budget"]

        def finish(kept: dict, forget: bool = True) -> None:
            """Record the kept cases of a group with every round timed so far."""
            for case, first, times, peak, wall in kept.values():
                result = pooled(case, first, times, options, (peak or {}).get("peak_gflops"))
                append(out, case_record(case, run_id, "ok", result, peak=peak, wall_s=wall))
                counts["ok"] += 1
            kept.clear()
            for w in workers.values() if forget else ():
                w.call(("forget",), settings["time_limit"])

        stopped = False
        with _progress(len(pending)) as bar:
            for group in comparison_groups(pending):  # `finish` leaves `kept` empty
                for case in group:
                    if out_of_budget():
                        left = len(pending) - sum(counts.values()) - len(kept)
                        print(f"budget of {settings['budget']:g} s spent: {left} cases not started; "
                              "run again with --resume to measure them", file=sys.stderr)
                        stopped = True
                        break
                    bar.set_description(case.label(), refresh=False)
                    reason = skip_reason(case)
                    peak = peaks.get((case.device, case.threads))
                    t0 = time.monotonic()
                    if reason:
                        record = case_record(case, run_id, "skipped", error=reason, peak=peak)
                    else:
                        limit, cut_by_budget = settings["time_limit"], False
                        if settings["budget"] is not None:  # never run far past the budget either
                            remaining = settings["budget"] - (time.monotonic() - started)
                            if remaining < limit:
                                limit, cut_by_budget = max(remaining, 1.0), True
                        reply = worker_for(case.threads).call(
                            ("case", case, options, (peak or {}).get("peak_gflops"), rounds > 1), limit)
                        if cut_by_budget and reply[0] == "failed" and "exceeded the time limit" in reply[1]:
                            print(f"budget of {settings['budget']:g} s spent during {case.label()}: not "
                                  "recorded; run again with --resume to measure the rest", file=sys.stderr)
                            stopped = True
                            break
                        if reply[0] == "ok" and rounds > 1:
                            kept[case.key()] = (case, reply[1], [reply[1]["times"]], peak,
                                                time.monotonic() - t0)
                            bar.update(1)
                            continue
                        status = "ok" if reply[0] == "ok" else "failed"
                        record = case_record(case, run_id, status, reply[1] if status == "ok" else None,
                                             error=None if status == "ok" else reply[1], peak=peak,
                                             wall_s=time.monotonic() - t0)
                    append(out, record)
                    counts[record["status"]] += 1
                    bar.update(1)
                for r in range(1, rounds):  # rounds 2.., in alternating order
                    if stopped or out_of_budget() or not kept:
                        break
                    for key in (list(kept)[::-1] if r % 2 else list(kept)):
                        case, first, times, peak, wall = kept[key]
                        bar.set_description(f"{case.label()} round {r + 1}/{rounds}", refresh=False)
                        t0 = time.monotonic()
                        reply = worker_for(case.threads).call(("retime", case, options),
                                                              settings["time_limit"])
                        if reply[0] == "ok":  # a failed round (crash, timeout) keeps the others
                            times.append(reply[1])
                        kept[key] = (case, first, times, peak, wall + time.monotonic() - t0)
                finish(kept)
                if stopped:
                    break
    finally:
        if kept and finish is not None:  # interrupted between rounds: keep what was measured
            finish(kept, forget=False)
        for w in workers.values():
            w.stop()
    print(f"bench run: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped in "
          f"{time.monotonic() - started:.0f} s; records in {out / RECORDS_FILE}", file=sys.stderr)
    return 0
