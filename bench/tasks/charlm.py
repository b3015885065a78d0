"""Character language model on The Time Machine, d2l chapters 8-9.

d2l's data (bench.tasks.timemachine), its training recipe (one-hot input, hidden 256, batch 32,
35 steps, SGD lr 1, gradient clipping at 1, 500 epochs) and greedy generation; plus a validation
perplexity on a held-out tail of the book. `--protocol lab` runs the lab's recipe and the variants
its reports list (bench.tasks.lab_numbers).

Public API for other tools: load_time_machine, batches, Vocab, CharLM, train, evaluate, predict.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

from bench import data as bdata

from . import plots
from .charlm_model import CharLM, evaluate, predict, train  # noqa: F401  (the public API)
from .common import (
    CLIP_RULE,
    INITS,
    OPTIMIZER_RULE,
    Timer,
    at_least,
    count,
    list_of,
    positive,
    seed_all,
)
from .runner import Loaded, Run, task_record, task_spec
from .timemachine import (  # noqa: F401  (re-exported: the public API lives in this module)
    Vocab,
    batches,
    load_split,
    load_time_machine,
    preprocess,
    seq_data_iter_random,
    seq_data_iter_sequential,
)

PREFIXES = (
    "time traveller",
    "traveller",
    "the time traveller says that",
    "when the time traveller returns to the garden",
    "the time traveller begins learning the language",
    "the time traveller determines that",
    "the time traveller knows he will have to stop",
    "when he wakes up",
    "the time traveller finds himself",
    "the time traveller tells the narrator to wait for him",
)


# ---------------------------------------------------------------------------------------------
# The task: python -m bench train charlm ...


def _lab_variants() -> dict[str, tuple[str, dict]]:
    """The lab's runs (bench.tasks.lab_numbers: 000 and 001), by slug: (the lab's variant name,
    settings). Each fixes the cell kind; "larger hidden" does not say how large: 512, the size
    of the lab's RNN from scratch. "concise" is torch.nn's default init, "scratch" d2l's
    N(0, 0.01) (init normal)."""
    from . import lab_numbers

    out: dict[str, tuple[str, dict]] = {}
    for ls in lab_numbers.SETTINGS:
        slug = ls.variant.lower().replace(" ", "-")
        if ls.task != "charlm" or slug in out:
            continue
        kind = "gru" if "GRU" in ls.variant else "rnn" if "RNN" in ls.variant else "lstm"
        settings = {
            "kind": kind,
            "batch_size": ls.batch,
            "num_steps": ls.num_steps,
            "lr": ls.lr,
            "hidden_size": ls.hidden or 512,
            "optimizer": ls.optimizer,
            "init": ls.init,
            "num_layers": ls.layers,
            "max_tokens": 10000,
            "clip": ls.clip,
        }
        out[slug] = (ls.variant, settings)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=500, help="epochs (d2l: 500)")
    parser.add_argument("--batch-size", type=list_of(int, "--batch-size"), default=[32])
    parser.add_argument("--num-steps", type=list_of(int, "--num-steps"), default=[35])
    parser.add_argument(
        "--lr",
        type=list_of(float, "--lr"),
        default=None,
        help="learning rates (default 1 for SGD, 0.01 for Adam)",
    )
    parser.add_argument(
        "--hidden", "--hidden-size", dest="hidden", type=list_of(int, "--hidden"), default=[256]
    )
    parser.add_argument(
        "--optimizer", type=list_of(str, "--optimizer"), default=["sgd"], help="sgd, adam"
    )
    parser.add_argument(
        "--init",
        type=list_of(str, "--init"),
        default=["default"],
        help=f"weight init, comma list of {', '.join(INITS)}",
    )
    parser.add_argument(
        "--layers", "--num-layers", dest="layers", type=list_of(int, "--layers"), default=[1]
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=10000,
        help="training characters from the start of the book (d2l: 10000; 0: all)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="held-out tail of the book (validation)"
    )
    parser.add_argument("--val-every", type=int, default=10, help="validation every N epochs")
    parser.add_argument("--random-iter", action="store_true", help="d2l's random sampling")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (d2l: 1)")
    parser.add_argument("--num-preds", type=int, default=100, help="generated characters")
    parser.add_argument(
        "--variant",
        type=list_of(str, "--variant"),
        default=["concise-lstm"],
        help="--protocol lab: the lab's runs, comma list of "
        f"{', '.join(_lab_variants())} or all (each fixes its cell kind)",
    )


def _lab_grid(args) -> list[dict]:
    variants = _lab_variants()
    names = list(variants) if "all" in args.variant else args.variant
    unknown = [v for v in names if v not in variants]
    if unknown:
        raise ValueError(
            f"--variant must be among {', '.join(variants)} or all, got {', '.join(unknown)}"
        )
    return [{**variants[v][1], "variant": variants[v][0]} for v in names]


def settings_grid(args) -> list[dict]:
    """The settings of every run a command line asks for (one per combination of the lists)."""
    if args.protocol == "lab":
        grid = _lab_grid(args)
    else:
        grid = [
            {
                "batch_size": bs,
                "num_steps": steps,
                "lr": lr,
                "hidden_size": hidden,
                "optimizer": opt.lower(),
                "init": init,
                "num_layers": layers,
                "max_tokens": args.max_tokens,
                "clip": args.clip,
            }
            for bs, steps, hidden, opt, init, layers in itertools.product(
                args.batch_size, args.num_steps, args.hidden, args.optimizer, args.init, args.layers
            )
            for lr in args.lr or [1.0 if opt.lower() == "sgd" else 0.01]
        ]
    common = {
        "epochs": args.epochs,
        "val_fraction": args.val_fraction,
        "random_iter": bool(args.random_iter),
        "num_preds": args.num_preds,
        "protocol": args.protocol,
    }
    return [{**s, **common} for s in grid]


def load(args) -> Loaded:
    found = bdata.find("timemachine.txt", args.data)
    return Loaded({"found": found, "val_every": args.val_every}, found.source)


def runs(args, data: dict) -> list[Run]:
    """Every combination of the lists; a lab run's kind is its variant's (--kind is ignored)."""
    out = []
    for s, backend, seed in itertools.product(settings_grid(args), args.backends, args.seeds):
        kinds = [s["kind"]] if "kind" in s else args.kinds
        settings = {k: v for k, v in s.items() if k != "kind"}
        out += [Run(kind, backend, seed, settings) for kind in kinds]
    return out


def run(r: Run, data: dict, device: str = "cpu", show_progress=None) -> dict:
    s, seed = r.settings, r.seed
    train_corpus, val_corpus, vocab = load_split(
        s["max_tokens"], s["val_fraction"], data["found"].path
    )
    seed_all(seed)
    model = CharLM(
        r.kind, r.backend, len(vocab), s["hidden_size"], s["num_layers"], init=s["init"], seed=seed
    ).to(device)
    result = train(
        model,
        train_corpus,
        s["epochs"],
        s["batch_size"],
        s["num_steps"],
        s["lr"],
        s["optimizer"],
        s["clip"],
        s["random_iter"],
        seed,
        val_corpus,
        data["val_every"],
        show_progress,
    )
    samples = {}
    with Timer() as t_gen:
        for prefix in PREFIXES:
            start = time.perf_counter()
            text = predict(prefix, s["num_preds"], model, vocab)
            samples[prefix] = {"text": text, "seconds": time.perf_counter() - start}
    final_val = evaluate(model, val_corpus, s["batch_size"], s["num_steps"]) if val_corpus else None
    metrics = {
        "perplexity": result["perplexity"][-1] if result["perplexity"] else None,
        "val_perplexity": final_val,
        "train_time_s": result["train_time_s"],
        "tokens_per_s": result["tokens_per_s"],
        "predict_time_s": t_gen.seconds,
        "predict_ms_per_char": 1000 * t_gen.seconds / max(1, len(PREFIXES) * s["num_preds"]),
        "epochs": s["epochs"],
    }
    curves = {
        "epoch": list(range(1, len(result["perplexity"]) + 1)),
        "perplexity": result["perplexity"],
        "val_epoch": result["val_epochs"],
        "val_perplexity": result["val_perplexity"],
    }
    timings = {k: result[k] for k in ("train_time_s", "tokens", "tokens_per_s")}
    timings["predict_time_s"] = t_gen.seconds
    corpus = {"train_tokens": len(train_corpus), "val_tokens": len(val_corpus)}
    extra = {"samples": samples, "vocab_size": len(vocab), "corpus": corpus}
    return task_record("charlm", r, metrics, curves, timings, **extra)


def line(record: dict) -> str:
    s, m = record["settings"], record["metrics"]
    sample = record["samples"][PREFIXES[0]]["text"]
    return (
        f"charlm {record['kind']}/{record['backend']} seed {record['seed']} "
        f"{s.get('variant', '')} {s['optimizer']} lr {s['lr']} H {s['hidden_size']} "
        f"L {s['num_layers']} b {s['batch_size']} T {s['num_steps']} init {s['init']}: "
        f"perplexity {m['perplexity']:.2f}, val {m['val_perplexity'] or math.nan:.2f}, "
        f"{m['tokens_per_s']:.0f} tokens/s, {m['train_time_s']:.1f} s\n  {sample!r}"
    )


RULES = (
    count("epochs"),
    count("batch_size"),
    count("num_steps"),
    ("lr", "--lr", "a number > 0", lambda v: v is None or positive(v)),
    count("hidden"),
    ("optimizer", "--optimizer", "one of sgd, adam, rmsprop", OPTIMIZER_RULE[3]),
    ("init", "--init", f"one of {', '.join(INITS)}", lambda v: v in INITS),
    count("layers"),
    ("max_tokens", "--max-tokens", "an integer >= 0 (0: the whole book)", at_least(0)),
    ("val_fraction", "--val-fraction", "in [0, 1)", lambda v: 0 <= v < 1),
    ("val_every", "--val-every", "an integer >= 0 (0: only at the end)", at_least(0)),
    CLIP_RULE,
    ("num_preds", "--num-preds", "an integer >= 0", at_least(0)),
)


def lab_curves() -> dict[str, list[tuple[int, float]]]:
    """The labs' own training-perplexity points per charlm variant (bench.tasks.lab_numbers);
    a variant two labs report keeps the longer curve."""
    from . import lab_numbers

    out: dict[str, list[tuple[int, float]]] = {}
    for ls in lab_numbers.SETTINGS:
        points = lab_numbers.curve(ls.lab, ls.variant) if ls.task == "charlm" else []
        if len(points) > len(out.get(ls.variant, [])):
            out[ls.variant] = points
    return out


def section(runs: list[dict], out_dir: Path) -> str:
    from .report_section import link, protocol, table

    rows = []
    for r in runs:
        s, m = r["settings"], r["metrics"]
        rows.append(
            {
                "protocol": protocol(r),
                "variant": s.get("variant", ""),
                "kind": r["kind"],
                "backend": r["backend"],
                "seed": r["seed"],
                "layers": s.get("num_layers"),
                "hidden": s.get("hidden_size"),
                "batch": s.get("batch_size"),
                "steps": s.get("num_steps"),
                "opt": s.get("optimizer"),
                "lr": s.get("lr"),
                "init": s.get("init"),
                "epochs": s.get("epochs"),
                "train ppl": m.get("perplexity"),
                "val ppl": m.get("val_perplexity"),
                "tokens/s": m.get("tokens_per_s"),
                "train s": m.get("train_time_s"),
                "predict ms/char": m.get("predict_ms_per_char"),
                "data": r.get("data_source"),
            }
        )
    rows.sort(key=lambda d: (d["protocol"], d["variant"], d["kind"], d["backend"], d["seed"]))
    md = [
        "## Character LM: The Time Machine (d2l ch. 8-9)\n",
        "Training perplexity is d2l's number (first 10,000 characters, memorised); validation "
        "perplexity is on the held-out last 10% of the book. tokens/s counts training only. "
        "The figures leave out the short speed-pair runs.\n",
        table(rows),
    ]
    for path in plots.charlm_perplexity(runs, out_dir, "report_charlm", lab_curves()):
        md.append(link(path, out_dir, path.stem))
    sample_rows = []
    for r in sorted(runs, key=lambda r: (r["kind"], r["backend"], r["seed"]))[:8]:
        for prefix in PREFIXES[:2]:
            text = r.get("samples", {}).get(prefix, {}).get("text", "")
            sample_rows.append(
                {
                    "run": f"{r['kind']}/{r['backend']} s{r['seed']}",
                    "prefix": prefix,
                    "greedy continuation": text[len(prefix) :][:100],
                }
            )
    md += ["\nGreedy generation (100 characters):\n", table(sample_rows)]
    return "\n".join(md)


COMPARED = (("perplexity", "train perplexity"), ("val_perplexity", "validation perplexity"))
FLAWS = (
    "The lab's perplexity is measured on the 10,000 characters it trains on, which a "
    "256-unit LSTM memorises in 500 epochs (perplexity near 1): it says nothing about text the "
    "model has not seen. cellbench's validation perplexity is on the last 10% of the book, "
    "never trained on; it bottoms out early and then rises as the slice is memorised."
)
plot = plots.charlm_perplexity


TASK = task_spec(__name__)
