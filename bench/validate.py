"""`python -m bench validate MODULE:ATTR --kind KIND`: is a new kernel correct, and how fast is it?

The candidate is an nn.Module class taking torch.nn's constructor arguments for its kind and
using torch.nn's parameter names (weight_ih_l0, ..., _reverse), or a factory returning one. It is
registered in `cells` under `--name` (default "candidate") and checked in three ways:

1. Equivalence (cells.equivalence.compare): candidate vs torch.nn in float64 on shared weights,
   over a configuration matrix (layers 1-3, bidirectional, batch_first, bias=False, hx given and
   None, sequence length 1 and 200, batch 1; relu for the RNN). Output, final state(s), and the
   gradients of every parameter, the input and hx are compared norm-wise; a parameter that gets
   no gradient fails by name. Then float32 on part of the matrix with the tolerance of
   cells/tolerances.py, and float16/bfloat16 on a GPU where one is present.
   A constructor that raises for an option (say bidirectional=True) marks that option
   "unsupported", not failed, unless `--require OPTION` names it.
2. Contract (bench/contract.py): torch.nn's behaviour beyond one forward and backward pass
   (train/eval dropout, the caller's tensors, .grad accumulation, state between calls, thread
   count and determinism, non-contiguous input, requires_grad combinations, state_dict round
   trips, dtype and device, .double()/deepcopy/pickle); each check is named in the report.
3. Training parity: the candidate and torch.nn train a d2l char-LM from the same weights on the
   same batches; the loss trajectories must agree within float32 noise (criterion in
   `parity_criterion`).
4. Speed: the candidate runs in the same sweep as the built-in backends (`python -m bench run`)
   at the d2l size and one larger shape; the report gives tokens/s and ratios to native.

The verdict is written to OUT/validate.md (and a "validate" record to OUT/records.jsonl); the
exit status is 0 only if everything required passed, else 1 with a one-line reason (2: the
candidate cannot be loaded or the arguments are wrong).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

import cells
from bench import contract
from bench.cli import csv, number
from cells.equivalence import Config, Result, compare
from cells.kinds import KINDS
from cells.tolerances import tolerance

# Constructor options a candidate may leave unsupported (it must raise at construction).
OPTIONS = ("multilayer", "bidirectional", "batch_first", "no-bias", "relu")
# What --require accepts: the options above, the half dtypes, and the other checks.
REQUIRABLE = OPTIONS + ("float16", "bfloat16", "train", "speed") + contract.CONTRACT_OPTIONS
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}

D2L_SHAPE = dict(input_size=28, hidden_size=256, batch=32, seq_len=35)
LARGE_SHAPE = dict(input_size=28, hidden_size=512, batch=32, seq_len=35)  # d2l with 2x hidden
SPEED_MODES = ("train", "infer", "generate")

# Training parity: the candidate's loss trajectory may be at most PARITY_FACTOR times further
# from the float64 torch.nn trajectory than torch.nn's own float32 trajectory is, plus an
# absolute floor (relative to the loss) for runs where torch.nn float32 happens to be very close.
PARITY_FACTOR = 10.0
PARITY_FLOOR = 1e-5


# --- loading ---------------------------------------------------------------------------------
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
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is a {type(obj).__name__}, not a class or factory")
    return obj


# --- the configuration matrix -------------------------------------------------------------
def config_options(config: Config) -> frozenset:
    """The optional constructor features a configuration uses."""
    used = set()
    if config.num_layers > 1:
        used.add("multilayer")
    if config.bidirectional:
        used.add("bidirectional")
    if config.batch_first:
        used.add("batch_first")
    if not config.bias:
        used.add("no-bias")
    if config.kind == "rnn" and config.nonlinearity == "relu":
        used.add("relu")
    return frozenset(used)


def matrix(kind: str, quick: bool = False) -> list[Config]:
    """The float64 configuration matrix. Each entry targets a class of real bugs:

    base (T6 B3 hx): gate order, biases, state update, final states, time shift, backward;
    hx None: default state handling; T1: no loop at all (final state = output); B1: batch
    broadcasting; layers 2/3: layer stacking and the input width of upper layers; bidirectional:
    reversal and the h_n order layer * D + d; batch_first: transposes; bias=False: bias-free
    paths; T200: drift and error that accumulate over long sequences; relu (rnn).
    The quick matrix keeps one representative of each (about 7 configurations).
    """
    base = Config(kind)
    if quick:
        configs = [
            base,
            replace(base, with_hx=False),
            replace(base, seq_len=1, batch=1),
            replace(base, num_layers=2, bidirectional=True, batch_first=True),
            replace(base, bias=False),
            replace(base, num_layers=3, bidirectional=True, bias=False, with_hx=False, batch=1),
            replace(base, seq_len=200, hidden_size=5, input_size=3),
        ]
    else:
        configs = [
            base,
            replace(base, with_hx=False),
            replace(base, seq_len=1),
            replace(base, batch=1),
            replace(base, num_layers=2),
            replace(base, num_layers=3),
            replace(base, bidirectional=True),
            replace(base, bidirectional=True, num_layers=2),
            replace(base, batch_first=True),
            replace(base, bias=False),
            replace(base, seq_len=1, batch=1, with_hx=False),
            replace(base, seq_len=200),
            replace(
                base, seq_len=200, num_layers=2, bidirectional=True, batch_first=True, with_hx=False
            ),
            replace(
                base,
                num_layers=3,
                bidirectional=True,
                batch_first=True,
                bias=False,
                with_hx=False,
                batch=1,
            ),
        ]
    if kind == "rnn":
        configs += [
            replace(base, nonlinearity="relu"),
            replace(base, nonlinearity="relu", num_layers=2, bidirectional=True),
        ]
    return configs


def low_precision_matrix(kind: str, quick: bool = False) -> list[Config]:
    """Configurations checked in float32 (and float16/bfloat16 on a GPU)."""
    base = Config(kind)
    configs = [base, replace(base, seq_len=200, hidden_size=5, input_size=3)]
    if not quick:
        configs.insert(1, replace(base, num_layers=2, bidirectional=True, batch_first=True))
    return configs


@dataclass
class Check:
    """One equivalence check: a configuration in one dtype on one device."""

    config: Config
    dtype: str
    device: str
    status: str = "pass"  # pass | fail | unsupported | skipped
    reason: str = ""
    result: Result | None = None

    def label(self) -> str:
        return f"{self.config.label()} [{self.dtype}{'' if self.device == 'cpu' else ' ' + self.device}]"


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build(factory: Callable[..., nn.Module], config: Config, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module = factory(config.input_size, config.hidden_size, **config.nn_kwargs())
    if not isinstance(module, nn.Module):
        raise TypeError(f"the factory returned a {type(module).__name__}, not an nn.Module")
    return module


def check_one(
    factory, config: Config, dtype: torch.dtype, device: str, required: set, seed: int = 0
) -> Check:
    name = str(dtype).replace("torch.", "")
    check = Check(config, name, device)
    options = config_options(config)
    try:
        module = build(factory, config, seed)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        culprits = unsupported_options(factory, config) or options
        needed = sorted(culprits & required)
        if not options:
            check.status, check.reason = "fail", f"construction raised {message}"
        elif needed:
            check.status, check.reason = (
                "fail",
                (
                    f"required option {', '.join(needed)} is "
                    f"unsupported (construction raised {message})"
                ),
            )
        else:
            check.status, check.reason = "unsupported", f"{', '.join(sorted(culprits))}: {message}"
        return check
    try:
        module = module.to(device=device, dtype=dtype)
    except Exception as exc:
        check.status, check.reason = (
            "fail",
            f"cannot move to {device}/{name}: {exc}".splitlines()[0],
        )
        return check
    result = compare(module, config, seed=seed, tol=tolerance(dtype))
    check.result = result
    if result.passed:
        return check
    if name in HALF and result.problem.startswith("raised") and name not in required:
        check.status, check.reason = "unsupported", f"{name}: {result.problem}"
        return check
    check.status, check.reason = "fail", failure_detail(result)
    return check


SINGLE_OPTION = {
    "multilayer": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "batch_first": dict(batch_first=True),
    "no-bias": dict(bias=False),
    "relu": dict(nonlinearity="relu"),
}


def unsupported_options(factory, config: Config) -> frozenset:
    """Which of a failing configuration's options raise at construction on their own."""
    culprits = set()
    for option in config_options(config):
        try:
            build(factory, Config(config.kind, **SINGLE_OPTION[option]), seed=0)
        except Exception:
            culprits.add(option)
    return frozenset(culprits)


def failure_detail(result: Result, most: int = 3) -> str:
    """One line: the problem, or the tensors without gradient, then the worst errors."""
    if result.problem:
        return result.problem
    parts = (
        [f"no gradient for {', '.join(result.missing_gradients)}"]
        if result.missing_gradients
        else []
    )
    most += len(parts)
    failed = sorted(
        (e for e in result.errors if not e.passed),
        key=lambda e: -(e.rel_error / e.tolerance) if not math.isnan(e.rel_error) else -math.inf,
    )
    parts += [
        f"{e.name} rel. error {e.rel_error:.2e} > {e.tolerance:.0e} (max abs "
        f"{e.max_abs_error:.2e} at {e.where})"
        for e in failed
    ]
    more = len(parts) - most
    return "; ".join(parts[:most]) + (f"; and {more} more" if more > 0 else "")


def equivalence(
    factory,
    kind: str,
    quick: bool,
    required: set,
    device: str = "auto",
    progress: Callable[[str], None] = lambda s: None,
) -> list[Check]:
    checks = []
    with _threads(1):  # tiny shapes: threads only add contention on shared machines
        for config in matrix(kind, quick):
            checks.append(check_one(factory, config, torch.float64, "cpu", required))
            progress(f"  {checks[-1].status:11s} {checks[-1].label()}")
        for config in low_precision_matrix(kind, quick):
            checks.append(check_one(factory, config, torch.float32, "cpu", required))
            progress(f"  {checks[-1].status:11s} {checks[-1].label()}")
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    for name, dtype in HALF.items():
        for config in low_precision_matrix(kind, quick)[:2]:
            if not gpu or not torch.cuda.is_available():
                why = "no CUDA GPU" if not torch.cuda.is_available() else "--device cpu"
                check = Check(
                    config,
                    name,
                    "cuda",
                    "fail" if name in required else "skipped",
                    why + (f" ({name} is required)" if name in required else ""),
                )
            else:
                check = check_one(factory, config, dtype, "cuda", required)
            checks.append(check)
            progress(f"  {check.status:11s} {check.label()}")
    return checks


def worst_errors(checks: list[Check]) -> list[dict]:
    """Per tensor name: the worst error (relative to its tolerance) over all checks."""
    worst: dict[str, dict] = {}
    for check in checks:
        if check.result is None:
            continue
        for e in check.result.errors:
            score = e.rel_error / e.tolerance if not math.isnan(e.rel_error) else math.inf
            if e.name not in worst or score > worst[e.name]["score"]:
                worst[e.name] = dict(
                    tensor=e.name,
                    rel_error=e.rel_error,
                    tolerance=e.tolerance,
                    max_abs_error=e.max_abs_error,
                    where=e.where,
                    passed=e.passed,
                    config=check.label(),
                    score=score,
                )
        for n in check.result.missing_gradients:
            worst[f"grad_{n}"] = dict(
                tensor=f"grad_{n}",
                rel_error=math.nan,
                tolerance=math.nan,
                max_abs_error=math.nan,
                where="received no gradient",
                passed=False,
                config=check.label(),
                score=math.inf,
            )
    return sorted(worst.values(), key=lambda w: -w["score"])


# --- training parity ---------------------------------------------------------------------
def load_charlm(max_tokens: int = 10000):
    """(corpus, vocab_size, batches, source): the Time Machine through bench.tasks.charlm, with
    d2l's preprocessing (the text ships inside the package, so this needs no data folder)."""
    from bench.tasks.charlm import batches, load_time_machine

    corpus, vocab = load_time_machine(max_tokens=max_tokens)
    return (
        corpus,
        len(vocab),
        batches,
        "the Time Machine via bench.tasks.charlm (d2l preprocessing)",
    )


def parity_criterion(candidate: list[float], ref32: list[float], ref64: list[float]) -> dict:
    """Float32 noise = how far torch.nn in float32 is from torch.nn in float64 on the same run.

    dev(x) = max over steps of |x_k - ref64_k| / ref64_k. Pass iff
    dev(candidate) <= max(PARITY_FACTOR * dev(ref32), PARITY_FLOOR).
    """

    def dev(xs):
        return max((abs(a - b) / abs(b) for a, b in zip(xs, ref64)), default=0.0)

    d_cand, d_ref = dev(candidate), dev(ref32)
    bound = max(PARITY_FACTOR * d_ref, PARITY_FLOOR)
    first = next(
        (k for k, (a, b) in enumerate(zip(candidate, ref64)) if not abs(a - b) / abs(b) <= bound),
        None,
    )
    finite = all(math.isfinite(x) for x in candidate)
    return dict(
        dev_candidate=d_cand,
        dev_torch_float32=d_ref,
        bound=bound,
        first_step_over=first,
        passed=finite and d_cand <= bound,
    )


def train_parity(
    factory,
    kind: str,
    steps: int = 50,
    hidden: int = 256,
    batch: int = 32,
    num_steps: int = 35,
    lr: float = 1.0,
    seed: int = 0,
) -> dict:
    """The candidate and torch.nn (float32 and float64) train bench.tasks.charlm's model with its
    trainer (d2l's recipe: SGD, clipping at 1, state carried) from the same weights on the same
    batches; the per-step losses are compared by parity_criterion."""
    from bench.tasks.charlm import CharLM, train

    corpus, vocab, _, source = load_charlm()
    if len(corpus) < batch * num_steps + 1:
        raise ValueError(f"the corpus ({len(corpus)} tokens) holds no batch of {batch}x{num_steps}")
    ref32 = CharLM(kind, "native", vocab, hidden, seed=seed)
    ref64 = CharLM(kind, "native", vocab, hidden, seed=seed).double()
    ref64.load_state_dict({k: v.double() for k, v in ref32.state_dict().items()})
    cand = CharLM(kind, "native", vocab, hidden, seed=seed)
    torch.manual_seed(seed)
    cand.rnn = factory(vocab, hidden)
    cand.rnn.load_state_dict(ref32.rnn.state_dict())
    out = dict(
        source=source,
        steps=steps,
        hidden=hidden,
        batch=batch,
        num_steps=num_steps,
        lr=lr,
        vocab=vocab,
    )
    common = dict(
        epochs=steps,
        batch_size=batch,
        num_steps=num_steps,
        lr=lr,
        seed=seed,
        max_steps=steps,
        show_progress=False,
    )
    with _threads(1):
        out["torch_float64"] = train(ref64, corpus, **common)["step_losses"]
        out["torch_float32"] = train(ref32, corpus, **common)["step_losses"]
        try:
            out["candidate"] = train(cand, corpus, **common)["step_losses"]
            missing = [n for n, p in cand.rnn.named_parameters() if p.grad is None]
            if missing:
                raise RuntimeError(f"no gradient for {', '.join(missing)}")
        except Exception as exc:
            out.update(passed=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            return out
    out.update(parity_criterion(out["candidate"], out["torch_float32"], out["torch_float64"]))
    return out


# --- speed -------------------------------------------------------------------------------
REGISTRATION = '''\
"""Written by `bench validate`: importing this registers the candidate (sweep workers import it)."""
import importlib
import cells
_module, _attr = {target!r}.split(":", 1)
_obj = importlib.import_module(_module)
for _part in _attr.split("."):
    _obj = getattr(_obj, _part)
cells.register({kind!r}, {name!r}, _obj, replace=True)
'''


def speed(
    target: str,
    kind: str,
    name: str,
    out_dir: Path,
    shapes: dict,
    backends: list[str],
    modes=SPEED_MODES,
    timeout: float = 3600,
    extra_args: Sequence[str] = (),
) -> dict:
    """Run `python -m bench run` with the candidate among the built-ins; ratios to native."""
    work = out_dir / "speed"
    work.mkdir(parents=True, exist_ok=True)
    module_name = "cellbench_validate_candidate"
    (work / f"{module_name}.py").write_text(
        REGISTRATION.format(target=target, kind=kind, name=name)
    )
    if importlib.util.find_spec("bench.sweep") is None:
        return dict(
            status="skipped", reason="bench.sweep (python -m bench run) is not available", rows=[]
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(work), os.getcwd()]
        + sys.path[1:]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    from bench.records import read_cases

    rows, problems = [], []
    for shape_name, shape in shapes.items():
        records_dir = work / shape_name
        cmd = [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--import",
            module_name,
            "--kinds",
            kind,
            "--backends",
            ",".join(backends),
            "--modes",
            ",".join(modes),
            "--input-size",
            str(shape["input_size"]),
            "--hidden-size",
            str(shape["hidden_size"]),
            "--batch",
            str(shape["batch"]),
            "--seq-len",
            str(shape["seq_len"]),
            "--out",
            str(records_dir),
            *extra_args,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode not in (0, 1) or not records_dir.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            problems.append(f"{shape_name}: `bench run` exited {proc.returncode}: {tail[0]}")
            continue
        cases = read_cases([records_dir])
        if not cases:
            problems.append(f"{shape_name}: `bench run` wrote no case records")
            continue
        for r in cases:  # the timing engine's records: ratio to native with its CI over rounds
            rows.append(
                dict(
                    shape=shape_name,
                    mode=r.mode,
                    backend=r.backend,
                    status=r.status,
                    tokens_per_s=r.tokens_per_s,
                    ratio_to_native=r.ratio_to_native,
                    ratio_ci95=r.ratio_ci95,
                    stop_reason=r.stop_reason,
                    error=r.error or "",
                    iqr_rel=r.iqr_rel,
                    noisy=r.noisy,
                )
            )
    candidate_errors = [r for r in rows if r["backend"] == name and r["status"] not in ("ok", None)]
    return dict(
        status="error" if problems and not rows else "ok",
        reason="; ".join(problems),
        rows=rows,
        candidate_errors=candidate_errors,
        shapes=shapes,
    )


# --- report ------------------------------------------------------------------------------
def _fmt(x, spec_=".2e"):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec_)


def render(v: dict) -> str:
    from bench.report import ratio_text

    lines = [
        f"# Validation of `{v['target']}` ({v['kind']})",
        "",
        f"**Verdict: {'PASS' if v['passed'] else 'FAIL'}**"
        + ("" if v["passed"] else f" — {v['reason']}"),
        "",
        f"Registered as backend `{v['name']}`; torch {torch.__version__}; "
        f"required options: {', '.join(sorted(v['required'])) or 'none'}.",
        "",
        "## What was checked",
        "",
        "* **Equivalence** with torch.nn in float64 on the same weights "
        "(cells.equivalence.compare): output, final state(s), and the gradients of every "
        "parameter, the input and hx, driven by random inputs and random upstream gradients; "
        "norm-wise relative error against the tolerance of cells/tolerances.py "
        + ", ".join(
            f"{k}: {tolerance(getattr(torch, k)):.0e}"
            for k in ("float64", "float32", "float16", "bfloat16")
        )
        + ".",
        "* **Contract**: torch.nn's behaviour beyond one forward and backward pass, one "
        "named check per clause (bench/contract.py).",
        "* **Training parity**: "
        + (
            "skipped (--no-train)"
            if v["train"] is None
            else "char-LM, candidate vs torch.nn from the same weights on the same batches."
        ),
        "* **Speed**: "
        + (
            "skipped (--no-speed)"
            if v["speed"] is None
            else "the candidate in the same sweep as the built-in backends."
        ),
        "",
    ]
    checks = v["checks"]
    counts = {
        s: sum(c.status == s for c in checks) for s in ("pass", "fail", "unsupported", "skipped")
    }
    lines += [
        "## Equivalence",
        "",
        f"{len(checks)} checks: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['unsupported']} unsupported, {counts['skipped']} skipped.",
        "",
    ]
    first = next((c for c in checks if c.status == "fail"), None)
    if first:
        lines += [f"**First failing configuration:** `{first.label()}` — {first.reason}", ""]
    lines += [
        "| configuration | dtype | status | worst tensor | rel. error | tolerance | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        w = c.result.worst() if c.result else None
        note = c.reason if c.status != "pass" else ""
        lines.append(
            f"| {c.config.label()} | {c.dtype}{'' if c.device == 'cpu' else ' ' + c.device} | "
            f"{c.status} | {w.name if w else '—'} | {_fmt(w.rel_error) if w else '—'} | "
            f"{_fmt(w.tolerance, '.0e') if w else '—'} | {note.replace('|', '/')[:200]} |"
        )
    lines += [
        "",
        "### Worst error per tensor (over all checks)",
        "",
        "| tensor | rel. error | tolerance | max abs. error | at index | configuration |",
        "|---|---|---|---|---|---|",
    ]
    for w in v["worst"]:
        lines.append(
            f"| {w['tensor']} | {_fmt(w['rel_error'])} | {_fmt(w['tolerance'], '.0e')} | "
            f"{_fmt(w['max_abs_error'])} | {w['where']} | {w['config']} |"
        )
    unsupported = [c for c in checks if c.status == "unsupported"]
    if unsupported:
        lines += [
            "",
            "Unsupported (the candidate raised at construction; pass `--require OPTION` "
            "to make these failures): " + "; ".join(sorted({c.reason for c in unsupported})),
        ]
    lines += [""] + contract.render(v.get("contract", []))
    t = v["train"]
    lines += ["## Training parity", ""]
    if t is None:
        lines.append("Skipped.")
    else:
        lines += [
            f"Char-LM on {t['source']}: vocab {t['vocab']}, hidden {t['hidden']}, batch "
            f"{t['batch']} x {t['num_steps']} steps, {t['steps']} SGD steps (lr {t['lr']}, "
            "gradient clipping at norm 1), state carried between batches.",
            "",
            f"Criterion: with dev(x) = max_k |loss_k(x) - loss_k(torch.nn float64)| / "
            f"loss_k(torch.nn float64), pass iff dev(candidate) <= max({PARITY_FACTOR:g} x "
            f"dev(torch.nn float32), {PARITY_FLOOR:g}).",
            "",
        ]
        if "error" in t:
            lines.append(f"**FAIL**: the candidate raised during training: {t['error']}")
        else:
            lines += [
                f"dev(candidate) = {t['dev_candidate']:.2e}, dev(torch.nn float32) = "
                f"{t['dev_torch_float32']:.2e}, bound = {t['bound']:.2e}: "
                f"**{'pass' if t['passed'] else 'FAIL'}**"
                + (
                    ""
                    if t["first_step_over"] is None
                    else f" (first over the bound at step {t['first_step_over']})"
                ),
                "",
                "| step | candidate | torch.nn float32 | torch.nn float64 |",
                "|---|---|---|---|",
            ]
            n = len(t["candidate"])
            for k in sorted({0, 1, n // 4, n // 2, 3 * n // 4, n - 1} & set(range(n))):
                lines.append(
                    f"| {k} | {t['candidate'][k]:.6f} | {t['torch_float32'][k]:.6f} | "
                    f"{t['torch_float64'][k]:.6f} |"
                )
    s = v["speed"]
    lines += ["", "## Speed", ""]
    if s is None:
        lines.append("Skipped (--no-speed).")
    elif s["status"] == "skipped" or not s["rows"]:
        lines.append(f"Not measured: {s.get('reason') or 'no results'}.")
    else:
        lines += [
            "Measured by `python -m bench run` (its timing engine: the correctness gate, then "
            "interleaved rounds of every backend of a shape in one worker until each ratio's 95% "
            "CI is within 5% or the time cap); ratio = native's round time / the backend's, median "
            "over rounds (> 1: faster than torch.nn), with its bootstrap 95% CI; *undecided* when "
            "the interval contains 1. Shapes: "
            + "; ".join(
                f"{k}: I{sh['input_size']} H{sh['hidden_size']} B{sh['batch']} T{sh['seq_len']}"
                for k, sh in s["shapes"].items()
            )
            + ".",
            "",
            "| shape | mode | backend | tokens/s | ratio to native (95% CI) | IQR / median | stop | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            name = f"**{r['backend']}**" if r["backend"] == v["name"] else r["backend"]
            iqr = r.get("iqr_rel")
            iqr = (
                "—"
                if iqr is None or (isinstance(iqr, float) and math.isnan(iqr))
                else f"{iqr:.0%}" + (" (noisy)" if r.get("noisy") else "")
            )
            lines.append(
                f"| {r['shape']} | {r['mode']} | {name} | {_fmt(r['tokens_per_s'], ',.0f')} | "
                f"{ratio_text(r['ratio_to_native'], r.get('ratio_ci95')) or '—'} | {iqr} | "
                f"{r.get('stop_reason') or '—'} | {r['status']}"
                f"{(': ' + str(r['error'])[:80]) if r['error'] else ''} |"
            )
        if s.get("reason"):
            lines += ["", f"Problems: {s['reason']}"]
    return "\n".join(lines) + "\n"


# --- the command -------------------------------------------------------------------------
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
        help="reduced matrix (~9 checks), 10 training steps at hidden 64, speed at "
        "the d2l size against native only",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed sweep (CI)")
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
        help="built-in backends in the sweep (default: all available; quick: native)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where float16/bfloat16 are checked (auto: cuda if present)",
    )
    parser.add_argument(
        "--out", default="runs/validate", help="directory for validate.md and records"
    )
    parser.set_defaults(func=main)


def validate(
    target: str,
    kind: str,
    *,
    name: str = "candidate",
    required=(),
    quick: bool = False,
    train: bool = True,
    run_speed: bool = True,
    train_steps: int | None = None,
    train_hidden: int | None = None,
    speed_backends: list[str] | None = None,
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
    factory = load_target(target)
    cells.register(kind, name, factory, replace=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    progress(f"validate {target} as {kind}/{name}: equivalence")
    checks = equivalence(factory, kind, quick, required, device, progress)
    failures = [f"equivalence: {c.label()}: {c.reason}" for c in checks if c.status == "fail"]
    progress("contract")
    contract_verdicts = contract.run_contract(factory, kind, required, device, progress)
    if contract.failure_reason(contract_verdicts):
        failures.append(contract.failure_reason(contract_verdicts))

    train_result = None
    if train:
        progress("training parity")
        try:
            train_result = train_parity(
                factory,
                kind,
                steps=train_steps or (10 if quick else 50),
                hidden=train_hidden or (64 if quick else 256),
            )
        except Exception as exc:
            train_result = dict(
                passed=False,
                error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                source="?",
                vocab="?",
                hidden="?",
                batch="?",
                num_steps="?",
                steps="?",
                lr="?",
            )
        if not train_result["passed"]:
            failures.append(
                "training parity: "
                + (
                    train_result.get("error")
                    or f"loss trajectory deviates {train_result['dev_candidate']:.2e} from "
                    f"torch.nn float64 (bound {train_result['bound']:.2e}, first at step "
                    f"{train_result['first_step_over']})"
                )
            )
    elif "train" in required:
        failures.append("training parity is required but --no-train was given")

    speed_result = None
    if run_speed:
        progress("speed sweep")
        if speed_backends is None:
            builtin = [b for b in cells.backends(kind) if b in cells.registry.BUILTIN]
            speed_backends = ["native"] if quick else builtin
        backends = list(dict.fromkeys([*speed_backends, name]))
        shapes = {"d2l": D2L_SHAPE} if quick else {"d2l": D2L_SHAPE, "large": LARGE_SHAPE}
        try:
            speed_result = speed(
                target,
                kind,
                name,
                out,
                shapes,
                backends,
                extra_args=["--no-peak", "--no-memory"] if quick else [],
            )
        except Exception as exc:
            speed_result = dict(status="error", reason=f"{type(exc).__name__}: {exc}", rows=[])
        for r in speed_result.get("candidate_errors", []):
            failures.append(
                f"speed: the candidate failed in the sweep ({r['shape']} {r['mode']}): {r['error']}"
            )
        if "speed" in required and not speed_result["rows"]:
            failures.append(f"speed is required but was not measured: {speed_result.get('reason')}")
    elif "speed" in required:
        failures.append("speed is required but --no-speed was given")

    verdict = dict(
        target=target,
        kind=kind,
        name=name,
        required=required,
        checks=checks,
        worst=worst_errors(checks),
        contract=contract_verdicts,
        train=train_result,
        speed=speed_result,
        passed=not failures,
        reason=failures[0] if failures else "",
        failures=failures,
        seconds=time.time() - started,
    )
    report = out / "validate.md"
    report.write_text(render(verdict), encoding="utf-8")
    verdict["report"] = str(report)
    from bench import records

    records.append(
        out,
        dict(
            type="validate",
            target=target,
            kind=kind,
            backend=name,
            passed=verdict["passed"],
            reason=verdict["reason"],
            required=sorted(required),
            quick=quick,
            torch=torch.__version__,
            checks=[
                dict(
                    label=c.label(),
                    status=c.status,
                    reason=c.reason,
                    result=c.result.to_dict() if c.result else None,
                )
                for c in checks
            ],
            worst=verdict["worst"],
            contract=[c.to_dict() for c in contract_verdicts],
            train={k: v for k, v in (train_result or {}).items()},
            speed=(speed_result or {}).get("rows"),
            seconds=verdict["seconds"],
        ),
    )
    return verdict


def main(args) -> int:
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
        unsupported = sorted(
            {c.reason.split(':')[0] for c in verdict["checks"] if c.status == "unsupported"}
            | {
                f"{c.name} ({c.detail.split(':')[0]})"
                for c in verdict["contract"]
                if c.status == "unsupported"
            }
        )
        print(
            "validate: PASS" + (f" (unsupported: {'; '.join(unsupported)})" if unsupported else "")
        )
        return 0
    print(f"validate: FAIL: {verdict['reason']}")
    return 1
