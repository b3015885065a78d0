"""`python -m bench validate MODULE:ATTR --kind KIND`: the command and the run of every check.

Loads the candidate, registers it in `cells` under --name, runs equivalence, contract, training
parity and speed, writes OUT/validate.md and a "validate" record to OUT/records.jsonl. Exit
status 0 only if everything required passed, 1 with a one-line reason, 2 when the candidate
cannot be loaded or an argument is wrong.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import torch
from torch import nn

import cells
from bench import contract, records
from bench.cli import csv, number
from bench.measure import Options
from cells.kinds import KINDS

from .equivalence import OPTIONS, check_equivalence, worst_errors
from .parity import train_parity
from .report import render
from .speed import D2L_SHAPE, LARGE_SHAPE, measure_speed

# What --require accepts: the constructor options, the half dtypes, and the other checks.
REQUIRABLE = OPTIONS + ("float16", "bfloat16", "train", "speed") + contract.CONTRACT_OPTIONS


def load_target(target: str) -> Callable[..., nn.Module]:
    """MODULE:ATTR -> the class or factory. Raises ValueError with a usable message."""
    if ":" not in target:
        raise ValueError(f"expected MODULE:ATTR (e.g. mypkg.kernels:MyLSTM), got {target!r}")
    module_name, attr = target.split(":", 1)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is a {type(obj).__name__}, not a class or factory")
    return obj


def _train_check(factory: Callable[..., nn.Module], kind: str, steps: int, hidden: int) -> dict:
    """train_parity, with an exception of the candidate turned into a failed result."""
    try:
        return train_parity(factory, kind, steps=steps, hidden=hidden)
    except Exception as exc:
        return dict(
            passed=False,
            error=f"{type(exc).__name__}: {exc}".splitlines()[0],
            **dict.fromkeys(
                ("source", "vocab", "hidden", "batch", "num_steps", "steps", "lr"), "?"
            ),
        )


def _train_failure(result: dict) -> str:
    if result.get("error"):
        return f"training parity: {result['error']}"
    return (
        f"training parity: loss trajectory deviates {result['dev_candidate']:.2e} from torch.nn "
        f"float64 (bound {result['bound']:.2e}, first at step {result['first_step_over']})"
    )


def _speed_backends(kind: str, wanted: Sequence[str] | None, quick: bool) -> list[str]:
    """The built-in backends timed beside the candidate; unknown names are a ValueError."""
    builtin = [b for b in cells.backends(kind) if b in cells.registry.BUILTIN]
    if wanted is None:
        return ["native"] if quick else builtin
    unknown = [b for b in wanted if b not in builtin]
    if unknown:
        raise ValueError(
            f"--speed-backends {', '.join(unknown)}: not a built-in backend available for "
            f"{kind}; available: {', '.join(builtin)}"
        )
    return list(wanted)


def _speed_check(
    target: str,
    kind: str,
    name: str,
    out: Path,
    backends: list[str],
    quick: bool,
    progress: Callable[[str], None],
) -> dict:
    """measure_speed at the d2l shape (and the large one unless quick); a failure of the timing
    machinery itself becomes a result with no rows."""
    shapes = {"d2l": D2L_SHAPE} if quick else {"d2l": D2L_SHAPE, "large": LARGE_SHAPE}
    options = Options(memory=not quick)
    try:
        return measure_speed(
            target, kind, name, out, shapes, backends, options=options, progress=progress
        )
    except Exception as exc:
        return dict(status="error", reason=f"{type(exc).__name__}: {exc}", rows=[])


def _record(verdict: dict, quick: bool) -> dict:
    """The "validate" record of OUT/records.jsonl."""
    return dict(
        type="validate",
        target=verdict["target"],
        kind=verdict["kind"],
        backend=verdict["name"],
        passed=verdict["passed"],
        reason=verdict["reason"],
        required=sorted(verdict["required"]),
        quick=quick,
        torch=torch.__version__,
        checks=[
            dict(
                label=c.label(),
                status=c.status,
                reason=c.reason,
                result=c.result.to_dict() if c.result else None,
            )
            for c in verdict["checks"]
        ],
        worst=verdict["worst"],
        contract=[c.to_dict() for c in verdict["contract"]],
        train=dict(verdict["train"] or {}),
        speed=(verdict["speed"] or {}).get("rows"),
        seconds=verdict["seconds"],
    )


def validate(
    target: str,
    kind: str,
    *,
    name: str = "candidate",
    required: Collection[str] = (),
    quick: bool = False,
    train: bool = True,
    run_speed: bool = True,
    train_steps: int | None = None,
    train_hidden: int | None = None,
    speed_backends: Sequence[str] | None = None,
    device: str = "auto",
    out: str | Path = "runs/validate",
    progress: Callable[[str], None] = print,
) -> dict:
    """Run every check; returns the verdict dict (also written to out/validate.md)."""
    required = set(required)
    unknown = required - set(REQUIRABLE)
    if unknown:
        raise ValueError(
            f"unknown --require option(s) {', '.join(sorted(unknown))}; "
            f"expected some of {', '.join(REQUIRABLE)}"
        )
    if name in cells.registry.BUILTIN:
        raise ValueError(f"--name {name!r} is a built-in backend; choose another name")
    backends = _speed_backends(kind, speed_backends, quick) if run_speed else []
    factory = load_target(target)
    cells.register(kind, name, factory, replace=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    v: dict = dict(target=target, kind=kind, name=name, required=required, train=None, speed=None)
    progress(f"validate {target} as {kind}/{name}: equivalence")
    v["checks"] = check_equivalence(factory, kind, quick, required, device, progress)
    v["worst"] = worst_errors(v["checks"])
    failures = [f"equivalence: {c.label()}: {c.reason}" for c in v["checks"] if c.status == "fail"]
    progress("contract")
    v["contract"] = contract.run_contract(factory, kind, required, device, progress)
    failures += (
        [contract.failure_reason(v["contract"])] if contract.failure_reason(v["contract"]) else []
    )

    if train:
        progress("training parity")
        steps, hidden = train_steps or (10 if quick else 50), train_hidden or (64 if quick else 256)
        v["train"] = _train_check(factory, kind, steps, hidden)
        failures += [] if v["train"]["passed"] else [_train_failure(v["train"])]
    elif "train" in required:
        failures.append("training parity is required but --no-train was given")

    if run_speed:
        progress("speed")
        v["speed"] = _speed_check(target, kind, name, out, backends, quick, progress)
        failures += [
            f"speed: the candidate failed in the timing ({r['shape']} {r['mode']}): {r['error']}"
            for r in v["speed"].get("candidate_errors", [])
        ]
        if "speed" in required and not v["speed"]["rows"]:
            failures.append(f"speed is required but was not measured: {v['speed'].get('reason')}")
    elif "speed" in required:
        failures.append("speed is required but --no-speed was given")

    v.update(
        passed=not failures,
        reason=failures[0] if failures else "",
        failures=failures,
        seconds=time.time() - started,
    )
    report = out / "validate.md"
    report.write_text(render(v), encoding="utf-8")
    v["report"] = str(report)
    records.append(out, _record(v, quick))
    return v


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="the candidate: an nn.Module class with torch.nn's constructor, or a factory",
    )
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--name", default="candidate", help="backend name to register it under")
    parser.add_argument(
        "--require",
        default="",
        metavar="OPT[,OPT]",
        help=f"options that must be supported: {', '.join(REQUIRABLE)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced matrix (7 float64 configurations, 9 for rnn; 2 float32), 10 training "
        "steps at hidden 64, speed at the d2l size against native only",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed check (CI)")
    parser.add_argument("--no-train", action="store_true", help="skip the training-parity check")
    parser.add_argument(
        "--train-steps", type=number(int, 1), default=None, help="SGD steps (default 50; quick 10)"
    )
    parser.add_argument(
        "--train-hidden",
        type=number(int, 1),
        default=None,
        help="hidden size (default 256; quick 64)",
    )
    parser.add_argument(
        "--speed-backends",
        type=csv(str),
        default=None,
        help="built-in backends timed beside the candidate; native is always one "
        "(default: all available; quick: native)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where float16/bfloat16 and the contract's CUDA case are checked "
        "(auto: cuda if present)",
    )
    parser.add_argument(
        "--out", default="runs/validate", help="directory for validate.md and records"
    )
    parser.set_defaults(func=main)


def _unsupported(verdict: dict) -> list[str]:
    """What the candidate declined at construction, for the PASS line."""
    return sorted(
        {c.reason.split(":")[0] for c in verdict["checks"] if c.status == "unsupported"}
        | {
            f"{c.name} ({c.detail.split(':')[0]})"
            for c in verdict["contract"]
            if c.status == "unsupported"
        }
    )


def main(args: argparse.Namespace) -> int:
    required = {r.strip() for r in args.require.split(",") if r.strip()}
    try:
        verdict = validate(
            args.target,
            args.kind,
            name=args.name,
            required=required,
            quick=args.quick,
            train=not args.no_train,
            run_speed=not args.no_speed,
            train_steps=args.train_steps,
            train_hidden=args.train_hidden,
            speed_backends=args.speed_backends,
            device=args.device,
            out=args.out,
        )
    except ValueError as exc:
        print(f"validate: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {verdict['report']}")
    if verdict["passed"]:
        unsupported = _unsupported(verdict)
        print(
            "validate: PASS" + (f" (unsupported: {'; '.join(unsupported)})" if unsupported else "")
        )
        return 0
    print(f"validate: FAIL: {verdict['reason']}")
    return 1
