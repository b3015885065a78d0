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
import signal
import sys
import time

from . import presets
from .cli import UsageError, add_import_option, csv, import_modules, number
from .measure import DTYPES, MODES, Options
from .planning import (
    SETTINGS,
    check_device,
    comparison_groups,
    done_keys,
    group_key,
    known_backends,
    options_for,
    plan,
    repair_torn_tail,
    shard_of,
    shard_spec,
    skip_reason,
)
from .runner import run_sweep

# re-exported: the tests and other tools import the planning and running names from here
__all__ = [
    "SETTINGS",
    "check_device",
    "comparison_groups",
    "configure",
    "done_keys",
    "group_key",
    "known_backends",
    "main",
    "options_for",
    "plan",
    "repair_torn_tail",
    "run_sweep",
    "shard_of",
    "shard_spec",
    "skip_reason",
]


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
        "--convention",
        type=csv(str),
        help="full: train computes weight and state gradients, FLOPs count every matmul "
        "(matmul-all, the default); recurrent: weights frozen, FLOPs count only the recurrent "
        "matmuls (matmul-recurrent), as DeepBench and FlashRNN report (docs/bench.md)",
    )
    g.add_argument(
        "--optimizer-step",
        action="store_true",
        help="train mode includes a plain SGD step (default: forward + backward only; "
        "not under --convention recurrent)",
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
    positive = number(float, 0, low_open=True)
    # the measurement settings (SETTINGS): option, type, help; the help ends with the default
    for option, kind, text in (
        (
            "time-limit",
            positive,
            "seconds per worker call: build + check + first call, or one round",
        ),
        ("min-rounds", number(int, 2), "rounds before the CI may stop a group"),
        ("max-rounds", number(int, 2), "at most this many rounds"),
        (
            "ci-target",
            number(float, 0, 1, low_open=True),
            "stop when every ratio's 95%% CI half-width is within this fraction",
        ),
        (
            "group-time-cap",
            positive,
            "seconds of rounds per comparison group, compilation excluded",
        ),
        ("min-run-time", positive, "seconds of timed calls per case and round"),
        ("min-repeats", number(int, 1), "timed blocks per case and round"),
        ("warmup", number(int, 0), "untimed calls after the first call"),
        (
            "noise-threshold",
            positive,
            "flag a case noisy when the IQR/median of its rounds exceeds this",
        ),
    ):
        default = getattr(d, option.replace("-", "_"))
        o.add_argument(f"--{option}", type=kind, help=f"{text} (default {default:g})")
    o.add_argument(
        "--budget",
        type=positive,
        help="after this many seconds start no new comparison group and add no round to the "
        "one in flight; the cases not started are recorded `unmeasured` (run again with --resume)",
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


# --- the command -----------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: records so far are kept and the workers are stopped."""


def _on_sigterm(signum: int, frame: object) -> None:
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
