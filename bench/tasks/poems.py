"""Tang poetry generation (the classic poetry-generation lab).

`title:content` lines through the lab's filters, wrapped in start `G` and end `E` markers
(bench.tasks.poems_model). cellbench protocol: Embedding 100 + a 2-layer cell of 128 + linear,
RMSprop lr 0.01, clip 5, batches of similar-length poems in shuffled order (the loss ignores the
padding), perplexity on held-out poems, sampled generation after `G`. lab protocol: the lab's
own recipe: the corpus in simplified characters (bench.tasks.simplified), its model (ReLU before
the LogSoftmax), batches of 100 poems in length order, each poem's mean loss summed / 100,
clip 1, the whole poem as input with its last target repeated (an extra E -> E), greedy
generation from the begin character alone; no held-out poems. Also measured: the lab's
one-poem-at-a-time loop, for tokens/s.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from bench import data as bdata

from . import common, plots
from .common import clip_gradients, make_optimizer, progress, seed_all
from .poems_model import (  # noqa: F401  (re-exported: the public API lives in this module)
    BAD,
    BEGIN_CHARS,
    CORPORA,
    END,
    START,
    CharVocab,
    PoemLM,
    _batch,
    find_corpus,
    generate,
    length_buckets,
    load_poems,
    parse_poems,
    perplexity,
    split_poems,
)
from .runner import Loaded, Run, task_record, task_spec

LAB = {"batch_size": 100, "clip": 1.0, "optimizer": "rmsprop", "lr": 0.01, "embed": 100}
LAB.update(hidden_size=128, num_layers=2, greedy=True, max_gen=50)
LAB_BEGIN = "日红山夜湖海月"  # the lab's begin characters, simplified


def lab_loop_tokens_per_s(
    model: PoemLM, encoded: list[list[int]], lr: float, n: int
) -> float | None:
    """The lab's loop: one poem per step (batch 1), on a copy of the model (None when n is 0)."""
    if not n:
        return None
    m = copy.deepcopy(model)
    opt = torch.optim.RMSprop(m.parameters(), lr=lr)
    tokens = 0
    start = time.perf_counter()
    for p in encoded[:n]:
        x, y = _batch([p])
        logits, _ = m(x)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1).to(logits.device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += y.numel()
    seconds = time.perf_counter() - start
    return tokens / seconds if seconds else float("nan")


def lab_batches(encoded: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """The lab's batches: poems sorted by length, cut in order, the same order every epoch."""
    ordered = sorted(encoded, key=len)
    return [ordered[j : j + batch_size] for j in range(0, len(ordered), batch_size)]


def _loss(
    logits: torch.Tensor, y: torch.Tensor, lab_batch: int = 0
) -> tuple[torch.Tensor, float, int]:
    """(loss, summed loss of every target, target count). cellbench: the mean over every target
    of the batch; lab: each poem's mean loss, summed and divided by the lab's batch size (the
    lab's loop over the poems of a batch, one at a time, computed at once)."""
    y = y.to(logits.device)
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="none"
    ).reshape(y.shape)
    mask = y != -100
    summed, n = float(flat.detach().sum()), int(mask.sum())
    if lab_batch:
        return (flat.sum(0) / mask.sum(0)).sum() / lab_batch, summed, n
    return flat.sum() / n, summed, n


def run(r: Run, data: dict, device: str = "cpu", show_progress=None) -> dict:
    s, seed = r.settings, r.seed
    lab = s["protocol"] == "lab"
    train_poems, test_poems, vocab = data["train"], data["test"], data["vocab"]
    seed_all(seed)
    model = PoemLM(
        r.kind, r.backend, len(vocab), s["embed"], s["hidden_size"], s["num_layers"], seed, lab=lab
    )
    model.to(device)
    opt = make_optimizer(s["optimizer"], model.parameters(), s["lr"])
    enc_train = [vocab.encode(p) for p in train_poems]
    enc_test = [vocab.encode(p) for p in test_poems]
    rng = random.Random(seed)
    lab_tps = lab_loop_tokens_per_s(model, enc_train, s["lr"], s["lab_loop_poems"])
    curves: dict[str, list] = {"epoch": [], "train_loss": [], "train_perplexity": []}
    if not lab:
        curves["test_perplexity"] = []
    tokens, seconds = 0, 0.0
    desc = f"poems {r.kind}/{r.backend}"
    for epoch in progress(range(s["epochs"]), total=s["epochs"], desc=desc, enabled=show_progress):
        total, count, batch_losses = 0.0, 0, []
        start = time.perf_counter()
        chunks = (
            lab_batches(enc_train, s["batch_size"])
            if lab
            else length_buckets(enc_train, s["batch_size"], rng)
        )
        for chunk in chunks:
            x, y = _batch(chunk, repeat_last=lab)
            logits, _ = model(x)
            loss, summed, n = _loss(logits, y, s["batch_size"] if lab else 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), s["clip"])
            opt.step()
            batch_losses.append(float(loss.detach()))
            total += summed
            count += n
        seconds += time.perf_counter() - start
        tokens += count
        curves["epoch"].append(epoch + 1)
        curves["train_loss"].append(sum(batch_losses) / len(batch_losses))
        curves["train_perplexity"].append(math.exp(total / count))
        if not lab:
            curves["test_perplexity"].append(perplexity(model, enc_test))
    sampler = None if s["greedy"] else torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    samples = {
        ch: generate(model, vocab, ch, s["max_gen"], sample=sampler, start="" if lab else START)
        for ch in s["begin"]
    }
    gen_seconds = time.perf_counter() - start
    metrics = {
        "train_loss": curves["train_loss"][-1],
        "train_perplexity": curves["train_perplexity"][-1],
        "test_perplexity": None if lab else curves["test_perplexity"][-1],
        "tokens_per_s": tokens / seconds if seconds else None,
        "lab_loop_tokens_per_s": lab_tps,
        "train_time_s": seconds,
        "generate_time_s": gen_seconds,
        "epochs": s["epochs"],
    }
    timings = {"train_time_s": seconds, "tokens": tokens, "generate_time_s": gen_seconds}
    return task_record(
        "poems",
        r,
        metrics,
        curves,
        timings,
        samples=samples,
        vocab_size=len(vocab),
        split={"train": len(train_poems), "test": len(test_poems)},
        filtered_poems=data["filtered"],
    )


COMPARED = (("train_loss", "train loss"), ("test_perplexity", "held-out perplexity"))
FLAWS = (
    "The lab reports only its training loss: no poem is held out, so nothing says how "
    "well the model predicts a poem it has not seen. Its targets repeat each poem's last "
    "target (an extra E -> E step that teaches nothing but is averaged into the loss), and its "
    "head applies a ReLU before the LogSoftmax, so no character can score below 0. Its figure "
    "is at epoch 59 of the full simplified corpus; cellbench's lab-protocol runs state their "
    "epochs and corpus in the table above."
)
plot = plots.poems_perplexity


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=50, help="epochs over the training poems")
    parser.add_argument(
        "--max-poems",
        type=int,
        default=0,
        help="random subset of the filtered poems (0: all ~57k lines' survivors)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.05, help="cellbench: held out")
    parser.add_argument("--batch-size", type=int, default=64, help="cellbench (lab: 100)")
    parser.add_argument("--embed", type=int, default=100)
    parser.add_argument("--hidden", "--hidden-size", dest="hidden", type=int, default=128)
    parser.add_argument("--layers", "--num-layers", dest="layers", type=int, default=2)
    parser.add_argument("--optimizer", default="rmsprop")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=5.0, help="cellbench (lab: 1)")
    parser.add_argument(
        "--begin", default=None, help=f"begin characters (cellbench {BEGIN_CHARS}, lab {LAB_BEGIN})"
    )
    parser.add_argument("--max-gen", type=int, default=50)
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    parser.add_argument(
        "--lab-loop-poems",
        type=int,
        default=64,
        help="poems for the one-at-a-time tokens/s measurement (0: skip)",
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--corpus",
        default="auto",
        choices=CORPORA,
        help="full: poems_tang.txt (--data, $CELLBENCH_DATA, cache, download); "
        "sample: the 3,000 poems shipped with cellbench; auto (default): a "
        "local full copy, else the sample",
    )


def load(args) -> Loaded:
    found = find_corpus(args.corpus, args.data)
    text = bdata.text_of(found.path)
    script = "traditional"
    if args.protocol == "lab":  # the lab's poems.txt is in simplified characters
        from .simplified import to_simplified

        text, script = to_simplified(text), "simplified"
    lab = args.protocol == "lab"
    train, test, vocab, total = split_poems(
        text, args.max_poems, args.test_fraction, args.split_seed, hold_out=not lab
    )
    if len(train) < 1:
        raise ValueError(
            f"--max-poems {args.max_poems} with --test-fraction {args.test_fraction} "
            "leaves no training poem; use a larger --max-poems"
        )
    corpus = "sample" if found.source == "embedded" else "full"
    print(
        f"poems ({corpus} corpus, {script}, {found.source} copy): {total} pass the filters; "
        f"training on {len(train)}, held out {len(test)}, vocabulary {len(vocab)}"
    )
    data = {"train": train, "test": test, "vocab": vocab, "filtered": total}
    data.update(corpus=corpus, script=script)
    return Loaded(data, found.source)


def runs(args, data: dict) -> list[Run]:
    s = {
        "epochs": args.epochs,
        "max_poems": args.max_poems,
        "test_fraction": args.test_fraction,
        "batch_size": args.batch_size,
        "embed": args.embed,
        "hidden_size": args.hidden,
        "num_layers": args.layers,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "clip": args.clip,
        "begin": args.begin or BEGIN_CHARS,
        "max_gen": args.max_gen,
        "greedy": bool(args.greedy),
        "lab_loop_poems": args.lab_loop_poems,
        "split_seed": args.split_seed,
        "corpus": data["corpus"],
        "script": data["script"],
        "protocol": args.protocol,
    }
    if args.protocol == "lab":
        s.update(LAB, begin=args.begin or LAB_BEGIN, test_fraction=0.0)
        s["variant"] = "2-layer LSTM hidden 128"  # the lab's name (bench.tasks.lab_numbers)
    return [
        Run(k, b, seed, s)
        for k, b, seed in itertools.product(args.kinds, args.backends, args.seeds)
    ]


def line(record: dict) -> str:
    m = record["metrics"]
    held = m["test_perplexity"]
    first = next(iter(record["samples"].items()), ("", ""))
    return (
        f"poems {record['kind']}/{record['backend']} seed {record['seed']}: training loss "
        f"{m['train_loss']:.3f}, held-out perplexity {'-' if held is None else f'{held:.1f}'}, "
        f"{m['tokens_per_s']:.0f} tokens/s batched vs {m['lab_loop_tokens_per_s'] or 0:.0f} one "
        f"poem at a time, {m['train_time_s']:.1f} s\n  {first[0]}: {first[1]}"
    )


RULES = (
    common.count("epochs"),
    ("max_poems", "--max-poems", "an integer >= 0 (0: all)", common.at_least(0)),
    ("test_fraction", "--test-fraction", "in (0, 1)", common.open_unit),
    common.count("batch_size"),
    common.count("embed"),
    common.count("hidden"),
    common.count("layers"),
    common.OPTIMIZER_RULE,
    common.LR_RULE,
    common.CLIP_RULE,
    ("begin", "--begin", "one or more begin characters", lambda v: v is None or bool(v)),
    common.count("max_gen"),
    ("lab_loop_poems", "--lab-loop-poems", "an integer >= 0 (0: skip)", common.at_least(0)),
    ("split_seed", "--split-seed", "an integer >= 0", common.at_least(0)),
)


def section(runs: list[dict], out_dir: Path) -> str:
    from .report_section import link, protocol, table

    rows, samples = [], []
    for r in sorted(runs, key=lambda r: (protocol(r), r["kind"], r["backend"], r["seed"])):
        s, m = r["settings"], r["metrics"]
        lab, tps = m.get("lab_loop_tokens_per_s"), m.get("tokens_per_s")
        rows.append(
            {
                "protocol": protocol(r),
                "kind": r["kind"],
                "backend": r["backend"],
                "seed": r["seed"],
                "script": s.get("script", "traditional"),
                "poems": (r.get("split") or {}).get("train"),
                "epochs": s.get("epochs"),
                "train loss": m.get("train_loss"),
                "held-out ppl": m.get("test_perplexity"),
                "train ppl": m.get("train_perplexity"),
                "tokens/s batched": tps,
                "tokens/s one poem at a time": lab,
                "speed-up": (tps / lab) if tps and lab else None,
                "train s": m.get("train_time_s"),
                "data": r.get("data_source"),
            }
        )
        for ch, text in list((r.get("samples") or {}).items())[:2]:
            run_name = f"{protocol(r)} {r['kind']}/{r['backend']} s{r['seed']}"
            samples.append({"run": run_name, "begin": ch, "poem": text})
    md = [
        "## Tang poetry generation\n",
        "cellbench: sampled generation after `G`, perplexity on held-out poems. lab: the lab's "
        "model and loss (see below), greedy generation from the begin character alone, no "
        "held-out poems; its train loss is the mean of the epoch's batch losses, as the lab "
        "prints it.\n",
        table(rows),
        link(plots.poems_perplexity(runs, out_dir, stem="report_poems"), out_dir, "poems"),
        "\nSamples (stop at E or 50 characters):\n",
        table(samples[:12]),
    ]
    return "\n".join(md)


TASK = task_spec(__name__)
