"""Where the numba LSTM's training step spends its time, against the FLOP floor and the measured
GEMM peak, beside torch.nn's whole step.

    python -m bench.lstm_profile [--shapes d2l,B8,B128,H128,H512] [--rounds 15] [--threads 2]
    python -m bench.lstm_profile --gemms
    python -m bench.lstm_profile --per-call [--shapes B8] [--rounds 15]

--gemms instead times, on one thread, the three GEMMs a step can use (lstm_gemm.py) at a
thread's share of the d2l size's step products: the forward's (512 x 284) @ (284 x B) and the
backward's (128 x 1024) @ (1024 x B), for B = 8, 9, 12, 16, 32, 128.

--per-call instead measures the Python and autograd around the kernels of a training step:
the time outside the three kernels inside real steps (timestamps around each kernel call), and
the same step with the kernels replaced by stubs that return stored results (the warm path);
then the step cut at each kernel call and at the module's return, `y.sum()` and `backward()`,
each segment with real and with stubbed kernels.

For each shape it times, in interleaved rounds (a round's time: the median of its
torch.utils.benchmark blocks, bench.machine.time_calls), torch.nn's and the numba module's training step
(forward, `y.sum().backward()`, gradients cleared, as `bench run` times train mode) and the
numba kernels of that step called directly on the arrays the module would use: the forward
(step GEMMs and pointwise), the backward's recurrence (dh GEMM per step and pointwise) and the
weight gradients. "rest" is the module step minus its kernels: packing the weights is cached
across calls (autograd_layer.PackedLSTM), so what remains is Python, autograd and allocation.
The table gives each part's median time, its FLOPs, and GFLOP/s as a share of the machine's
float32 GEMM peak (bench.machine.measure_peak). docs/numba.md, "Where the time goes", quotes it.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

SHAPES = {  # name: (input, hidden, batch, steps)
    "d2l": (28, 256, 32, 35),
    "B8": (28, 256, 8, 35),
    "B128": (28, 256, 128, 35),
    "H128": (28, 128, 32, 35),
    "H512": (28, 512, 32, 35),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.lstm_profile", description=__doc__)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"from {', '.join(SHAPES)}")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gemms", action="store_true", help="time the step GEMMs on one thread")
    p.add_argument(
        "--per-call", action="store_true", help="time the Python and autograd around the kernels"
    )
    args = p.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        p.error(f"--shapes: expected names from {', '.join(SHAPES)}, got {', '.join(unknown)}")
    if args.rounds < 1 or args.threads < 1:
        p.error(f"--rounds and --threads must be >= 1, got {args.rounds} and {args.threads}")
    return args


def _parts(module: Any, x: torch.Tensor) -> dict:
    """Callables for the numba kernels of one training step, on the module's own weights."""
    from cells.kernels.numba import lstm_gemm as LG
    from cells.kernels.numba import lstm_kernels as L
    from cells.kernels.numba import onednn
    from cells.kernels.numba.autograd_layer import pack_backward, pack_forward
    from cells.kernels.numba.threads import lstm_threads, threads_for

    T, B, I = x.shape  # noqa: E741
    H = int(module.hidden_size)
    G = 4 * H
    w = tuple(p.detach().numpy() for p in module.layer_weights(0, 0))
    nth = lstm_threads(H, I, B)
    wp, bp = pack_forward(w, nth)
    wpT = pack_backward(w[1], nth)
    x2 = x.numpy().reshape(T * B, I)
    f32 = np.float32
    zeros = np.zeros((B, H), f32)
    hs = np.empty((T + 1, B, H), f32)
    z, cells = np.empty((T + 1, LG.padded_k(H + I), B), f32), np.empty((T + 1, H, B), f32)
    gates = np.empty((T, G, B), f32)
    dy = np.random.default_rng(0).standard_normal((T, B, H)).astype(f32)
    dgT = np.empty((2, B, G), f32)
    dg = np.empty((2, LG.padded_rows(G, 4), B), f32)
    dg_all = np.empty((G, T * B), f32)
    br, ok = onednn.BRGEMM, onednn.AVAILABLE
    nw = threads_for(G * T * B * (H + I), G)
    return {
        "forward": lambda: L.forward(
            x2, zeros, zeros, wp, bp, hs, z, cells, gates, True, nth, br, ok
        ),
        "backward recurrence": lambda: L.backward(
            dy, zeros, zeros, cells, gates, wpT, True, True, nth, dg, dgT, dg_all, br, ok
        ),
        "weight gradients": lambda: LG.weight_grads(
            dg_all, hs[:T].reshape(T * B, H), x2, w[0], True, False, True, nw
        ),
    }


def _flops(I: int, H: int, B: int, T: int) -> dict[str, float]:  # noqa: E741
    step = 2 * B * 4 * H
    return {
        "forward": T * step * (H + I),
        "backward recurrence": T * step * H,
        "weight gradients": T * step * (H + I),
    }


def profile(name: str, rounds: int, peak: float, threads: int = 2) -> list[dict]:
    import cells
    from bench.machine import time_calls

    I, H, B, T = SHAPES[name]  # noqa: E741
    torch.manual_seed(0)
    native = torch.nn.LSTM(I, H)
    numba_module = cells.create("lstm", "numba", I, H)
    numba_module.load_state_dict(native.state_dict())
    x = torch.randn(T, B, I)

    def step(m: torch.nn.Module):
        def call() -> None:
            y, _ = m(x)
            y.sum().backward()
            for p in m.parameters():
                p.grad = None

        return call

    calls = {"torch.nn step": step(native), "numba step": step(numba_module)}
    calls.update(_parts(numba_module, x))
    times: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        call()
    for r in range(rounds):  # a round's time: the median of its torch.utils.benchmark blocks
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        for key in order:
            blocks = time_calls(calls[key], threads, min_run_time=0.02, min_repeats=1)
            times[key].append(float(np.median(blocks)))
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    flops = _flops(I, H, B, T)
    kernels = sum(med[k] for k in flops)
    rows = []
    for key in calls:
        fl = flops.get(key)
        if key == "numba step":
            fl = sum(flops.values())
        gf = fl / med[key] / 1e6 if fl else None
        rows.append(
            {
                "shape": name,
                "part": key,
                "ms": med[key],
                "GFLOP": fl / 1e9 if fl else None,
                "GFLOP/s": gf,
                "% of peak": 100 * gf / peak if gf and peak else None,
            }
        )
    rows.append(
        {"shape": name, "part": "rest (Python, autograd)", "ms": med["numba step"] - kernels}
    )
    rows.append(
        {
            "shape": name,
            "part": "floor at peak",
            "ms": sum(flops.values()) / peak / 1e6 if peak else None,
            "GFLOP": sum(flops.values()) / 1e9,
        }
    )
    return rows


def per_call_rows(name: str, rounds: int, steps: int = 20) -> list[dict]:
    """Microseconds per training step outside the three numba kernels: inside real steps, and
    with the kernels stubbed (each returns what its first call returned; the step's Python,
    autograd and allocation run as before, warm). Rounds alternate; medians over rounds."""
    return per_call(name, rounds, steps)[0]


def per_call(name: str, rounds: int, steps: int = 20) -> tuple[list[dict], list[dict]]:
    """per_call_rows, and the step cut at each kernel call and at the module's return,
    `y.sum()` and `backward()`: each segment's median over the rounds' steps, with real and
    with stubbed kernels, and their ratio (how much slower the same Python runs after real
    kernels)."""
    import time

    import cells
    from cells.kernels.numba import lstm_gemm as LG
    from cells.kernels.numba import lstm_kernels as L

    I, H, B, T = SHAPES[name]  # noqa: E741
    torch.manual_seed(0)
    module = cells.create("lstm", "numba", I, H)
    x = torch.randn(T, B, I)
    targets = ((L, "forward"), (L, "backward"), (LG, "weight_grads"))
    originals = [getattr(mod, attr) for mod, attr in targets]
    state: dict[str, Any] = {"stub": False}
    stored: dict[str, Any] = {}
    marks: list[tuple[str, float]] = []

    def timed(attr: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            marks.append((attr + "<", time.perf_counter()))
            if not state["stub"] or attr not in stored:
                stored[attr] = fn(*args)
            marks.append((attr + ">", time.perf_counter()))
            return stored[attr]

        return call

    def step() -> None:
        marks.append(("start", time.perf_counter()))
        y, _ = module(x)
        marks.append(("module>", time.perf_counter()))
        loss = y.sum()
        marks.append(("sum>", time.perf_counter()))
        loss.backward()
        marks.append(("backward>", time.perf_counter()))
        for p in module.parameters():
            p.grad = None
        marks.append(("end", time.perf_counter()))

    totals: dict[bool, list[float]] = {False: [], True: []}
    outside: dict[bool, list[float]] = {False: [], True: []}
    segments: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}
    try:
        for (mod, attr), fn in zip(targets, originals):
            setattr(mod, attr, timed(attr, fn))
        for _ in range(3):
            step()
        for r in range(2 * rounds):
            stub = r % 2 == 1
            state["stub"] = stub
            for _ in range(3):  # settle: the first stubbed step follows real kernels
                step()
            marks.clear()
            for _ in range(steps):
                step()
            inside = 0.0
            for (a, ta), (b, tb) in zip(marks, marks[1:]):
                if a == "end":
                    continue
                segments[stub].setdefault(f"{a} .. {b}", []).append(tb - ta)
                if a.endswith("<"):
                    inside += tb - ta
            total = (marks[-1][1] - marks[0][1]) / steps  # first start to last end
            totals[stub].append(total)
            outside[stub].append(total - inside / steps)
    finally:
        for (mod, attr), fn in zip(targets, originals):
            setattr(mod, attr, fn)
    rows = [
        {
            "shape": name,
            "kernels": "stubbed" if stub else "real",
            "step us": float(np.median(totals[stub])) * 1e6,
            "outside the kernels us": float(np.median(outside[stub])) * 1e6,
        }
        for stub in (False, True)
    ]
    segment_rows = []
    for seg, real in segments[False].items():
        stubbed = segments[True].get(seg)
        real_us = float(np.median(real)) * 1e6
        stubbed_us = float(np.median(stubbed)) * 1e6 if stubbed else float("nan")
        segment_rows.append(
            {
                "shape": name,
                "segment": seg,
                "real kernels us": real_us,
                "stubbed us": stubbed_us,
                "real / stubbed": real_us / stubbed_us,
            }
        )
    return rows, segment_rows


def gemm_rows(batches=(8, 9, 12, 16, 32, 128), repeats: int = 200) -> list[dict]:
    """GFLOP/s of OpenBLAS (as the kernels call it: in row blocks for the forward, whole for the
    backward), brgemm and dot_nt, one thread."""
    from numba import njit

    from bench.machine import time_calls
    from cells.kernels.numba import gemm, onednn
    from cells.kernels.numba.lstm_gemm import brgemm_dot, row_dot

    @njit(cache=False)
    def loop(how, br, w, v, vt, out, n):
        for _ in range(n):
            if how == 0:
                row_dot(w, v, out)
            elif how == 1:
                brgemm_dot(br, w, v, out)
            elif how == 2:
                gemm.dot_nt(w, vt, out)
            else:
                np.dot(w, v, out)

    rng = np.random.default_rng(0)
    rows = []
    for what, (m, k) in (("forward step", (512, 284)), ("backward dh step", (128, 1024))):
        for b in batches:
            w = rng.standard_normal((m, k)).astype(np.float32)
            v = rng.standard_normal((k, b)).astype(np.float32)
            vt, out = np.ascontiguousarray(v.T), np.empty((m, b), np.float32)
            row: dict = {"product": what, "M x K": f"{m} x {k}", "N (batch)": b}
            openblas = 0 if what == "forward step" else 3
            for how, name in ((openblas, "OpenBLAS"), (1, "brgemm"), (2, "dot_nt")):
                if how == 1 and not onednn.AVAILABLE:
                    continue

                args = (how, onednn.BRGEMM, w, v, vt, out, repeats)

                def call(args=args) -> None:
                    loop(*args)

                call()
                per_call = float(np.median(time_calls(call, 1, min_run_time=0.05, min_repeats=3)))
                row[name] = 2 * m * k * b * repeats / per_call / 1e9
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    import numba
    import pandas as pd

    from bench.machine import measure_peak, set_threads

    args = _parse(argv)
    if args.gemms:
        numba.set_num_threads(1)
        print("GFLOP/s on one thread")
        print(pd.DataFrame(gemm_rows()).to_markdown(index=False, floatfmt=".0f"))
        return
    set_threads(args.threads)
    numba.set_num_threads(args.threads)
    if args.per_call:
        results = [per_call(name, args.rounds) for name in args.shapes.split(",")]
        print(
            pd.DataFrame([r for rows, _ in results for r in rows]).to_markdown(
                index=False, floatfmt=".0f"
            )
        )
        segments = pd.DataFrame([r for _, segs in results for r in segs])
        print("\nThe step cut at each kernel call (x< .. x>: inside kernel x; the rest is Python)")
        print(segments.to_markdown(index=False, floatfmt=".1f"))
        return
    peak = measure_peak("cpu").get("peak_gflops") or 0.0
    print(f"float32 GEMM peak at {args.threads} threads: {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for name in args.shapes.split(","):
        rows += profile(name, args.rounds, peak, args.threads)
        print(f"{name} done", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
