"""`python -m bench run`: measure a grid of kinds x backends x modes x shapes; one record per case.

    python -m bench run --preset quick --out runs/latest --resume
    python -m bench run --kinds lstm --backends naive,native --batch 16,64 --out runs/mine
    python -m bench run --import mypkg.backends --kinds lstm --backends mine,native --out runs/x

Comma lists form a cartesian grid. The cases that differ only in the backend form a comparison
group, measured together in one worker subprocess by the timing engine (bench/timing.py):
correctness gate, first call, then interleaved rounds until every ratio to native is known to
within --ci-target or the group's time cap is hit. A group's records are appended to
OUT/records.jsonl when its last round ends. A case that raises, dies or exceeds --time-limit
becomes a `failed` record, one that fails the gate an `incorrect` one, and the sweep goes on.
`--resume` skips the cases that already have a record in OUT. Exit status: 0 when every case
was measured and correct (or declared unsupported by its backend), 1 otherwise (after the records
are written), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from . import presets
from .cli import (
    UsageError,
    add_import_option,
    check_names,
    csv,
    import_modules,
    number,
    warn_threads,
)
from .measure import DTYPES, FLOP_CONVENTION, MODES, NOISE_THRESHOLD, Case, Options
from .records import RECORDS_FILE, STATUSES, CaseRecord, append, read_cases
from .timing import GroupTimer

# Options fields a preset or the command line may set (the rest have one default, in Options)
SETTINGS = (
    "min_run_time",
    "min_repeats",
    "warmup",
    "min_rounds",
    "max_rounds",
    "ci_target",
    "group_time_cap",
    "time_limit",
    "budget",
    "noise_threshold",
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    g = parser.add_argument_group(
        "what to measure (comma lists form a grid; each replaces the preset's value)"
    )
    g.add_argument(
        "--preset",
        help=f"named sweep: {', '.join(presets.PRESETS)} (default: the d2l size "
        "for all kinds, backends and modes)",
    )
    g.add_argument("--kinds", type=csv(str), help="rnn,gru,lstm")
    g.add_argument(
        "--backends", type=csv(str), help="default: every available backend of each kind"
    )
    g.add_argument("--modes", type=csv(str), help=f"{','.join(MODES)}")
    g.add_argument("--input-size", type=csv(int))
    g.add_argument("--hidden-size", type=csv(int))
    g.add_argument("--num-layers", type=csv(int))
    g.add_argument(
        "--batch", type=csv(int), help="ignored by generate mode, which always uses batch 1"
    )
    g.add_argument("--seq-len", type=csv(int))
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu, or the preset's)")
    g.add_argument("--dtype", type=csv(str), help=f"{','.join(DTYPES)} (default float32)")
    g.add_argument("--threads", type=csv(int), help="torch and numba threads (default: all cores)")
    g.add_argument(
        "--optimizer-step",
        action="store_true",
        help="train mode includes a plain SGD step (default: forward + backward only)",
    )
    add_import_option(g)
    d = Options()
    o = parser.add_argument_group("how (defaults: the preset's, else these)")
    o.add_argument("--out", default="runs/latest", help="record directory (default runs/latest)")
    o.add_argument(
        "--resume", action="store_true", help="skip cases that already have a record in --out"
    )
    o.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume, measure failed and incorrect cases again",
    )
    o.add_argument(
        "--time-limit",
        type=number(float, 0, low_open=True),
        help=f"seconds per worker call: build + check + first call, or one round (default {d.time_limit:g})",
    )
    o.add_argument(
        "--budget",
        type=number(float, 0, low_open=True),
        help="start no new comparison group after this many seconds; the cases not started "
        "are recorded `unmeasured` (run again with --resume)",
    )
    o.add_argument(
        "--min-rounds",
        type=number(int, 2),
        help=f"rounds before the CI may stop a group (default {d.min_rounds})",
    )
    o.add_argument(
        "--max-rounds",
        type=number(int, 2),
        help=f"at most this many rounds (default {d.max_rounds})",
    )
    o.add_argument(
        "--ci-target",
        type=number(float, 0, 1, low_open=True),
        help=f"stop when every ratio's 95%% CI half-width is within this fraction (default {d.ci_target:g})",
    )
    o.add_argument(
        "--group-time-cap",
        type=number(float, 0, low_open=True),
        help=f"seconds of rounds per comparison group, compilation excluded (default {d.group_time_cap:g})",
    )
    o.add_argument(
        "--min-run-time",
        type=number(float, 0, low_open=True),
        help=f"seconds of timed calls per case and round (default {d.min_run_time:g})",
    )
    o.add_argument(
        "--min-repeats",
        type=number(int, 1),
        help=f"timed blocks per case and round (default {d.min_repeats})",
    )
    o.add_argument(
        "--warmup",
        type=number(int, 0),
        help=f"untimed calls after the first call (default {d.warmup})",
    )
    o.add_argument(
        "--noise-threshold",
        type=number(float, 0, low_open=True),
        help=f"flag a case noisy when the IQR/median of its rounds exceeds this (default {NOISE_THRESHOLD})",
    )
    o.add_argument(
        "--no-check",
        action="store_true",
        help="skip the correctness gate (records then say check_s null); never for published figures",
    )
    o.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    o.add_argument("--no-peak", action="store_true", help="skip the GEMM peak measurement")
    o.add_argument(
        "--in-process",
        action="store_true",
        help="run cases in this process: no isolation, no time limit (debugging)",
    )
    o.add_argument("--list", action="store_true", help="print the cases and exit without measuring")
    o.add_argument(
        "--shard",
        type=shard_spec,
        metavar="K/N",
        help="measure only shard K of N (1-based): a split of the planned cases by comparison "
        "group, the same on every machine, so N invocations measure each group exactly once",
    )
    o.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this machine; ray: one Ray task per shard on a Ray cluster (docs/cluster.md)",
    )
    o.add_argument(
        "--shard-count",
        type=number(int, 1),
        metavar="N",
        help="with --executor ray: shards to split the cases into (default: the cluster's nodes or GPUs)",
    )
    parser.set_defaults(func=main)


# --- planning ----------------------------------------------------------------------------------
def check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {device!r} is not available here (torch.cuda.is_available() is "
                "False); valid: cpu"
            )
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise UsageError(
                f"device {device!r} does not exist; valid: cpu, "
                + ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
            )
        return
    raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")


def known_backends(kind: str) -> list[str]:
    import cells

    return list(dict.fromkeys(cells.backends(kind) + list(cells.unavailable(kind))))


def plan(args: argparse.Namespace) -> tuple[list[Case], Options, presets.Preset | None]:
    """The cases to run (deduplicated, in order) and the settings; raises UsageError."""
    import cells
    from cells.kinds import KINDS

    from .environment import available_cores

    preset = presets.get(args.preset) if args.preset else None
    if args.kinds:
        check_names(args.kinds, KINDS, "kind")
    if args.modes:
        check_names(args.modes, MODES, "mode")
    dtypes = args.dtype or ["float32"]
    check_names(dtypes, DTYPES, "dtype")
    device = args.device or (preset.device if preset else "cpu")
    check_device(device)
    if args.backends:
        everything = sorted({b for k in (args.kinds or KINDS) for b in known_backends(k)})
        for b in args.backends:
            if b not in everything:
                raise UsageError(f"unknown backend {b!r}; valid: {', '.join(everything)}")
    threads = args.threads or [available_cores()]
    blocks = preset.blocks if preset else (presets.D2L,)
    blocks = [
        presets.override(
            b,
            kinds=args.kinds,
            backends=args.backends,
            modes=args.modes,
            input_size=args.input_size,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            batch=args.batch,
            seq_len=args.seq_len,
        )
        for b in blocks
    ]
    cases: dict[tuple, Case] = {}
    for block in blocks:  # mode-major, so that a sweep cut short by --budget has every kind
        for mode, kind in itertools.product(block.modes, block.kinds):
            names = list(block.backends) if block.backends is not None else cells.backends(kind)
            names = [n for n in names if n not in block.exclude]
            for backend, h, i, layers, batch, t, dtype, n in itertools.product(
                names,
                block.hidden_size,
                block.input_size,
                block.num_layers,
                block.batch,
                block.seq_len,
                dtypes,
                threads,
            ):
                case = Case(
                    kind,
                    backend,
                    mode,
                    h if i is None else i,
                    h,
                    layers,
                    1 if mode == "generate" else batch,
                    t,
                    device,
                    dtype,
                    n,
                    bool(args.optimizer_step) and mode == "train",
                )
                cases.setdefault(case.key(), case)
    ordered = sorted(cases.values(), key=lambda c: c.threads)  # stable: one worker per thread count
    warn_threads(sorted({c.threads for c in ordered}))
    if getattr(args, "shard", None):
        k, n = args.shard
        ordered = [c for c in ordered if shard_of(c, n) == k]
        args.shard_label = f"{k}/{n}"
    return ordered, options_for(args, preset), preset


def options_for(args: argparse.Namespace, preset: presets.Preset | None = None) -> Options:
    """Options: the defaults, then the preset's settings, then the command line's values."""
    values = dict(preset.settings) if preset else {}
    values.update(
        {name: getattr(args, name) for name in SETTINGS if getattr(args, name, None) is not None}
    )
    try:
        return Options(
            **values,
            memory=not getattr(args, "no_memory", False),
            check=not getattr(args, "no_check", False),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def shard_spec(text: str) -> tuple[int, int]:
    """'K/N' with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected K/N with integers 1 <= K <= N, got {text!r}"
        ) from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"expected K/N with integers 1 <= K <= N, got {text!r}")
    return k, n


def group_key(case: Case) -> tuple:
    """What the cases of one comparison group share: everything but the backend."""
    return case.key()[:1] + case.key()[2:]


def shard_of(case: Case, count: int) -> int:
    """The 1-based shard of `case`'s comparison group among `count`: a hash of the group's key,
    stable across machines, runs and Python processes (unlike hash())."""
    digest = hashlib.sha256(repr(group_key(case)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def comparison_groups(cases: list[Case]) -> list[list[Case]]:
    """Cases that differ only in the backend, together, in order of first appearance: their
    timing rounds are interleaved, so that a slow spell of the machine hits all of them."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(group_key(case), []).append(case)
    return list(groups.values())


def done_keys(out_dir: Path, retry_failed: bool = False) -> set[tuple]:
    """Keys of the cases already recorded in out_dir (failed and incorrect ones too, unless
    retry_failed; unmeasured ones never count as done)."""
    if not (out_dir / RECORDS_FILE).exists():
        return set()
    keep = (
        {"ok", "skipped", "unsupported"}
        if retry_failed
        else {"ok", "skipped", "unsupported", "failed", "incorrect"}
    )
    return {r.key() for r in read_cases([out_dir / RECORDS_FILE]) if r.status in keep}


def repair_torn_tail(out_dir: Path) -> None:
    """End a last line cut off by an interruption, so the next record starts on its own line
    (the reader then skips the torn line, with a warning, instead of losing the new record too)."""
    path = out_dir / RECORDS_FILE
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def skip_reason(case: Case) -> str | None:
    """Why a requested case cannot run here (None if it can)."""
    import cells

    if case.backend in cells.backends(case.kind):
        return None
    reasons = cells.unavailable(case.kind)
    if case.backend in reasons:
        return f"backend {case.backend!r} is unavailable: {reasons[case.backend]}"
    return f"backend {case.backend!r} is not registered for kind {case.kind!r}"


# --- running -----------------------------------------------------------------------------------
def _progress(total: int):
    from tqdm import tqdm

    quiet = not sys.stderr.isatty()
    return tqdm(total=total, disable=quiet, unit="case", dynamic_ncols=True, file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: records so far are kept and the workers are stopped."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(args: argparse.Namespace) -> int:
    args.started = time.monotonic()  # the --budget counts from here: imports and planning included
    try:
        import_modules(args.imports)
        cases, options, preset = plan(args)
    except (UsageError, ValueError) as exc:
        print(f"python -m bench run: error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for case in cases:
            print(case.label())
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if getattr(args, "executor", "local") == "ray":
            from . import cluster

            counts = cluster.run_on_ray(cases, options, args, preset)
        elif getattr(args, "shard_count", None):
            raise UsageError("--shard-count needs --executor ray (a local sweep takes --shard K/N)")
        else:
            counts = run_sweep(cases, options, args, preset)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # a declared limit (unsupported) is an answer, not a fault; anything else not ok is
    return 0 if counts["ok"] + counts["unsupported"] == sum(counts.values()) else 1


def _machine() -> str:
    from .environment import cpu_model

    return f"{cpu_model() or 'unknown CPU'} ({os.cpu_count()} cores)"


def run_sweep(
    cases: list[Case],
    options: Options,
    args: argparse.Namespace,
    preset: presets.Preset | None = None,
) -> dict[str, int]:
    """Measure `cases` group by group; returns the count of records per status."""
    from .environment import now
    from .worker import InProcess, Worker

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(out)
    skip = done_keys(out, args.retry_failed) if args.resume else set()
    pending = [c for c in cases if c.key() not in skip]
    run_id = uuid.uuid4().hex[:12]
    started = getattr(args, "started", None) or time.monotonic()
    log_path = str(out / "worker.log")
    machine = _machine()
    shard = getattr(args, "shard_label", None)
    print(
        f"bench run: {len(cases)} cases, {len(cases) - len(pending)} already recorded, "
        f"{len(pending)} to measure -> {out / RECORDS_FILE}",
        file=sys.stderr,
    )

    workers: dict[int, object] = {}

    def worker_for(threads: int):
        if threads not in workers:
            for w in workers.values():
                w.stop()
            workers.clear()
            workers[threads] = (
                InProcess(threads, args.imports)
                if args.in_process
                else Worker(threads, args.imports, log_path)
            )
        return workers[threads]

    counts = {status: 0 for status in STATUSES}
    peaks: dict[tuple[str, int], dict] = {}

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
            flop_convention="matmul-all",
        )

    def write(record: CaseRecord) -> None:
        append(out, record)
        counts[record.status] += 1

    def out_of_budget() -> bool:
        return options.budget is not None and time.monotonic() - started > options.budget

    groups = comparison_groups(pending)
    done_groups, interrupted = 0, False
    try:
        env = {}
        for threads in sorted({c.threads for c in pending}):
            w = worker_for(threads)
            reply = w.call(("env",), options.time_limit)
            if reply[0] == "ok" and not env:
                env = reply[1]
            for device in sorted({c.device for c in pending if c.threads == threads}):
                if args.no_peak:
                    peaks[(device, threads)] = {"peak_gflops": None, "peak_source": None}
                    continue
                reply = w.call(("peak", device), options.time_limit)
                peaks[(device, threads)] = (
                    reply[1]
                    if reply[0] == "ok"
                    else {"peak_gflops": None, "peak_source": None, "peak_error": reply[1]}
                )
        if not env:
            from .environment import collect

            env = collect()
        append(
            out,
            {
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
                "machine": machine,
                "shard": shard,
                "isolation": "in-process" if args.in_process else "worker subprocess",
                "flop_convention": FLOP_CONVENTION,
                "peaks": [{"device": d, "threads": t, **p} for (d, t), p in peaks.items()],
                "peak_gflops": max(
                    (p.get("peak_gflops") or 0 for p in peaks.values()), default=None
                )
                or None,
                "environment": env,
            },
        )
        with _progress(len(pending)) as bar:
            for group in groups:
                if out_of_budget():
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
                    worker = worker_for(runnable[0].threads)
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
                        for record in timer.entries:
                            write(record.record)
                            bar.update(1)
                    worker.call(("forget",), options.time_limit)
                done_groups += 1
    except KeyboardInterrupt:
        interrupted = True
        print(
            "interrupted: the records written so far are kept; run again with --resume",
            file=sys.stderr,
        )
        raise
    finally:
        for w in workers.values():
            w.stop()
        left = [c for g in groups[done_groups:] for c in g]
        if left and not interrupted:
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
    print(
        "bench run: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "ok")
        + f" in {time.monotonic() - started:.0f} s; records in {out / RECORDS_FILE}",
        file=sys.stderr,
    )
    return counts
