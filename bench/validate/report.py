"""The markdown report of `bench validate` (OUT/validate.md), from the verdict dict.

Every sentence about method is written from what the code does: the tolerances come from
cells/tolerances.py, the parity bound from bench.validate.parity, the speed settings from the
bench.measure.Options the speed check used.
"""

from __future__ import annotations

import math

import torch

from bench import contract
from bench.report import ratio_text
from cells.matrix import catches
from cells.tolerances import tolerance

from .equivalence import Check
from .parity import PARITY_FACTOR, PARITY_FLOOR


def _fmt(x: object, spec: str = ".2e") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _cell(text: str, most: int = 200) -> str:
    return text.replace("|", "/")[:most]


def _header(v: dict) -> list[str]:
    checks: list[Check] = v["checks"]
    per_dtype = {d: sum(c.dtype == d for c in checks) for d in ("float64", "float32")}
    tolerances = ", ".join(
        f"{k}: {tolerance(getattr(torch, k)):.0e}"
        for k in ("float64", "float32", "float16", "bfloat16")
    )
    train = (
        "skipped (--no-train)"
        if v["train"] is None
        else "bench.tasks.charlm's model and trainer, torch.nn in float64 and float32 and the "
        "candidate from the same weights on the same batches; per-step losses compared."
    )
    speed = (
        "skipped (--no-speed)"
        if v["speed"] is None
        else "the candidate beside the built-in backends in bench.timing's interleaved rounds."
    )
    return [
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
        f"* **Equivalence** with torch.nn in float64 on the same weights "
        f"(cells.equivalence.compare) over {per_dtype['float64']} configurations in float64, "
        f"{per_dtype['float32']} in float32 and, on a GPU, float16 and bfloat16: output, final "
        "state(s), and the gradients of every parameter, the input and hx, driven by random "
        "inputs, initial states (where given) and upstream gradients; norm-wise relative "
        f"error against the tolerance of cells/tolerances.py ({tolerances}).",
        "* **Contract**: torch.nn's behaviour beyond one forward and backward pass, one "
        "named check per clause (bench/contract.py).",
        f"* **Training parity**: {train}",
        f"* **Speed**: {speed}",
        "",
    ]


def _equivalence(v: dict) -> list[str]:
    checks: list[Check] = v["checks"]
    counts = {
        s: sum(c.status == s for c in checks) for s in ("pass", "fail", "unsupported", "skipped")
    }
    lines = [
        "## Equivalence",
        "",
        f"{len(checks)} checks: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['unsupported']} unsupported, {counts['skipped']} skipped.",
        "",
    ]
    first = next((c for c in checks if c.status == "fail"), None)
    if first:
        lines += [f"**First failing configuration:** `{first.label()}` — {first.reason}", ""]
        if catches(first.config):
            lines += [f"That configuration is in the matrix to catch: {catches(first.config)}.", ""]
    lines += [
        "| configuration | catches | dtype | status | worst tensor | rel. error | tolerance | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        w = c.result.worst() if c.result else None
        note = c.reason if c.status != "pass" else ""
        lines.append(
            f"| {c.config.label()} | {_cell(catches(c.config))} | {c.where()} | {c.status} | {w.name if w else '—'} | "
            f"{_fmt(w.rel_error) if w else '—'} | {_fmt(w.tolerance, '.0e') if w else '—'} | "
            f"{_cell(note)} |"
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
    unsupported = sorted({c.reason for c in checks if c.status == "unsupported"})
    if unsupported:
        lines += [
            "",
            "Unsupported (the candidate raised at construction, or in a half dtype; pass "
            "`--require OPTION` to make these failures): " + "; ".join(unsupported),
        ]
    return lines + [""]


def _training(t: dict | None) -> list[str]:
    lines = ["## Training parity", ""]
    if t is None:
        return lines + ["Skipped.", ""]
    lines += [
        f"Char-LM (bench.tasks.charlm: one-hot input, the recurrent layer, a linear head) on "
        f"{t['source']}: vocab {t['vocab']}, hidden {t['hidden']}, batches of {t['batch']} x "
        f"{t['num_steps']} characters, {t['steps']} SGD steps (lr {t['lr']}, gradient clipping "
        "at norm 1) with bench.tasks.charlm.train. Batches are sequential: the state is carried "
        "(detached) from one batch to the next within an epoch; each epoch starts from a zero "
        "state at a new offset into the corpus.",
        "",
        f"Criterion: with dev(x) = max_k |loss_k(x) - loss_k(torch.nn float64)| / "
        f"loss_k(torch.nn float64), pass iff every loss of the candidate is finite and "
        f"dev(candidate) <= max({PARITY_FACTOR:g} x dev(torch.nn float32), {PARITY_FLOOR:g}).",
        "",
    ]
    if "error" in t:
        return lines + [f"**FAIL**: the candidate raised during training: {t['error']}", ""]
    over = t["first_step_over"]
    lines += [
        f"dev(candidate) = {t['dev_candidate']:.2e}, dev(torch.nn float32) = "
        f"{t['dev_torch_float32']:.2e}, bound = {t['bound']:.2e}: "
        f"**{'pass' if t['passed'] else 'FAIL'}**"
        + ("" if over is None else f" (first over the bound at step {over})"),
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
    return lines + [""]


def _speed(s: dict | None, name: str) -> list[str]:
    lines = ["## Speed", ""]
    if s is None:
        return lines + ["Skipped (--no-speed).", ""]
    if not s["rows"]:
        return lines + [f"Not measured: {s.get('reason') or 'no results'}.", ""]
    o = s["options"]
    shapes = "; ".join(
        f"{k}: I{sh['input_size']} H{sh['hidden_size']} B{sh['batch']} T{sh['seq_len']}"
        for k, sh in s["shapes"].items()
    )
    lines += [
        "Measured by bench.timing.GroupTimer (the engine of `bench run`) in an isolated worker "
        f"at {s['threads']} thread{'s' if s['threads'] > 1 else ''}, float32 on the CPU. Per "
        "shape and mode, every backend is built, passes the correctness gate (bench.gate), is "
        "called once (compilation), warmed up and timed for a first round; further rounds time "
        "every backend back to back in alternating order. A round times at least "
        f"{o['min_run_time']:g} s of calls in at least {o['min_repeats']} blocks "
        "(torch.utils.benchmark), the round's time being the median per-call time of its "
        f"blocks. Rounds stop once, from round {o['min_rounds']} on, every ratio's 95% "
        f"bootstrap CI has a half-width within {o['ci_target']:.0%} of the ratio, or after "
        f"{o['group_time_cap']:g} s of rounds or {o['max_rounds']} rounds (column *stop*). "
        "Ratio = native's round time / the backend's, median over rounds (> 1: faster than "
        "torch.nn), with its percentile-bootstrap 95% CI; *undecided* when the interval "
        "contains 1. IQR / median is the spread of the round times (*noisy* above "
        f"{o['noise_threshold']:.0%}). Generate runs at batch 1. Shapes: {shapes}.",
        "",
        "| shape | mode | backend | tokens/s | ratio to native (95% CI) | rounds | IQR / median "
        "| stop | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        backend = f"**{r['backend']}**" if r["backend"] == name else r["backend"]
        iqr = r.get("iqr_rel")
        iqr_text = (
            "—"
            if iqr is None or (isinstance(iqr, float) and math.isnan(iqr))
            else f"{iqr:.0%}" + (" (noisy)" if r.get("noisy") else "")
        )
        error = f": {_cell(str(r['error']), 80)}" if r.get("error") else ""
        lines.append(
            f"| {r['shape']} | {r['mode']} | {backend} | {_fmt(r['tokens_per_s'], ',.0f')} | "
            f"{ratio_text(r['ratio_to_native'], r.get('ratio_ci95')) or '—'} | {r['rounds']} | "
            f"{iqr_text} | {r.get('stop_reason') or '—'} | {r['status']}{error} |"
        )
    if s.get("reason"):
        lines += ["", f"Problems: {s['reason']}"]
    return lines + [""]


def render(v: dict) -> str:
    """The whole report: verdict, what was checked, then one section per check."""
    lines = _header(v) + _equivalence(v) + contract.render(v.get("contract", []))
    lines += _training(v["train"]) + _speed(v["speed"], v["name"])
    return "\n".join(lines).rstrip("\n") + "\n"
