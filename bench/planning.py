"""Planning a sweep: the cases of a grid (deduplicated, validated, sharded), their comparison
groups, and what a record directory already holds (for --resume).

Used by `python -m bench run` (bench.sweep) and its Ray executor (bench.cluster).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
from pathlib import Path

from . import presets
from .cli import UsageError, check_names, warn_threads
from .measure import CONVENTIONS, DTYPES, MODES, Case, Options
from .records import RECORDS_FILE, read_cases

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
    conventions = getattr(args, "convention", None) or ["full"]
    check_names(conventions, CONVENTIONS, "convention")
    device = args.device or (preset.device if preset else "cpu")
    check_device(device)
    if args.backends:
        everything = sorted({b for k in (args.kinds or KINDS) for b in known_backends(k)})
        for b in args.backends:
            if b not in everything:
                raise UsageError(f"unknown backend {b!r}; valid: {', '.join(everything)}")
    threads = args.threads or [available_cores()]
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
        for b in (preset.blocks if preset else (presets.D2L,))
    ]
    cases: dict[tuple, Case] = {}
    for block in blocks:  # mode-major, so that a sweep cut short by --budget has every kind
        for mode, kind in itertools.product(block.modes, block.kinds):
            names = list(block.backends) if block.backends is not None else cells.backends(kind)
            names = [n for n in names if n not in block.exclude]
            for backend, h, i, layers, batch, t, dtype, n, convention in itertools.product(
                names,
                block.hidden_size,
                block.input_size,
                block.num_layers,
                block.batch,
                block.seq_len,
                dtypes,
                threads,
                conventions,
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
                    # frozen weights (recurrent) leave an optimizer nothing to step
                    bool(args.optimizer_step) and mode == "train" and convention == "full",
                    convention,
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
