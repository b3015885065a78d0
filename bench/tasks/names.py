"""Names -> language: the PyTorch "classifying names with a character-level RNN" tutorial.

cellbench protocol: de-duplicated names split train/test by name string (no name on both sides),
batched, packed for every backend that declares packed input, held-out accuracy. lab protocol:
the tutorial's own loop: a language drawn uniformly, then one of its names (class-balanced, with
replacement), one name per step, plain SGD lr 0.005 applied by hand, 100,000 steps, and the
accuracy of 10,000 more such draws, which are training names (in-sample). Data and models are in
bench.tasks.names_model.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from bench import data as bdata

from . import plots
from .common import (
    CLIP_RULE,
    LR_RULE,
    OPTIMIZER_RULE,
    at_least,
    clip_gradients,
    count,
    list_of,
    make_optimizer,
    open_unit,
    progress,
    seed_all,
)  # the option rules
from .names_model import (  # noqa: F401  (re-exported: the public API lives in this module)
    ALL_LETTERS,
    LETTER_INDEX,
    N_LETTERS,
    NamesClassifier,
    TutorialElman,
    encode,
    evaluate,
    load_names,
    split_names,
    unicode_to_ascii,
)
from .runner import Loaded, Run, task_record, task_spec

LAB_LR = 0.005  # the tutorial's learning_rate, applied by hand
LAB_PLOT_EVERY = 1000  # the tutorial's plot_every
LAB_CONFUSION_DRAWS = 10000  # the tutorial's n_confusion


def _train_cellbench(model, s: dict, data: dict, seed: int, desc: str, show_progress) -> dict:
    """Shuffled batches of the training names, `epochs` passes; held-out curves per epoch."""
    train_pairs, test_pairs, n_classes = data["train"], data["test"], len(data["languages"])
    opt = make_optimizer(s["optimizer"], model.parameters(), s["lr"])
    rng, order = random.Random(seed), list(train_pairs)
    keys = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    curves: dict[str, list] = {k: [] for k in keys}
    seconds, seen, chars = 0.0, 0, 0
    for epoch in progress(range(s["epochs"]), total=s["epochs"], desc=desc, enabled=show_progress):
        rng.shuffle(order)
        total_loss, correct = 0.0, 0
        start = time.perf_counter()
        for i in range(0, len(order), s["batch_size"]):
            chunk = order[i : i + s["batch_size"]]
            x, lengths = encode([n for n, _ in chunk])
            logits = model(x, lengths)
            y = torch.tensor([li for _, li in chunk], device=logits.device)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), s["clip"])
            opt.step()
            total_loss += float(loss.detach()) * len(chunk)
            correct += int((logits.argmax(1) == y).sum())
            chars += int(lengths.sum())
        seconds += time.perf_counter() - start
        seen += len(order)
        test_loss, test_acc, _ = evaluate(model, test_pairs, 256, n_classes)
        values = (epoch + 1, total_loss / len(order), correct / len(order), test_loss, test_acc)
        for k, v in zip(keys, values):
            curves[k].append(v)
    test_loss, test_acc, confusion = evaluate(model, test_pairs, 256, n_classes)
    metrics = {"test_accuracy": test_acc, "test_loss": test_loss, "epochs": s["epochs"]}
    metrics.update(train_accuracy=curves["train_accuracy"][-1], train_loss=curves["train_loss"][-1])
    return {
        "metrics": metrics,
        "curves": curves,
        "confusion": confusion,
        "seen": (seen, chars, seconds),
    }


def lab_draw(by_language: dict[str, list[str]], languages: list[str], rng: random.Random):
    """The tutorial's randomTrainingExample: a language uniformly, then one of its names."""
    li = rng.randrange(len(languages))
    return rng.choice(by_language[languages[li]]), li


def _train_lab(model, s: dict, data: dict, seed: int, desc: str, show_progress) -> dict:
    """The tutorial's loop: one drawn name per step, SGD by hand, no clipping; then the
    confusion matrix of LAB_CONFUSION_DRAWS more draws (training names: in-sample)."""
    by_language, languages = data["by_language"], data["languages"]
    rng = random.Random(seed)
    curves: dict[str, list] = {"step": [], "loss": [], "accuracy": []}
    running, correct, chars = 0.0, 0, 0
    start = time.perf_counter()
    for step in progress(
        range(1, s["steps"] + 1), total=s["steps"], desc=desc, enabled=show_progress
    ):
        name, li = lab_draw(by_language, languages, rng)
        x, lengths = encode([name])
        logits = model(x, lengths)
        loss = F.cross_entropy(logits, torch.tensor([li], device=logits.device))
        model.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-s["lr"])
        running += float(loss.detach())
        correct += int(logits.argmax(1).item() == li)
        chars += len(name)
        if step % LAB_PLOT_EVERY == 0 or step == s["steps"]:
            count = (step - 1) % LAB_PLOT_EVERY + 1
            curves["step"].append(step)
            curves["loss"].append(running / count)
            curves["accuracy"].append(correct / count)
            running, correct = 0.0, 0
    seconds = time.perf_counter() - start
    draws = [lab_draw(by_language, languages, rng) for _ in range(s["confusion_draws"])]
    sampled_loss, accuracy, confusion = evaluate(model, draws, 256, len(languages))
    metrics = {"sampled_accuracy": accuracy, "sampled_loss": sampled_loss, "steps": s["steps"]}
    metrics["final_loss"] = curves["loss"][-1]
    return {
        "metrics": metrics,
        "curves": curves,
        "confusion": confusion,
        "seen": (s["steps"], chars, seconds),
    }


def run(r: Run, data: dict, device: str = "cpu", show_progress=None) -> dict:
    s, seed = r.settings, r.seed
    seed_all(seed)
    languages = data["languages"]
    model = NamesClassifier(
        r.kind,
        r.backend,
        s["hidden_size"],
        s["num_layers"],
        len(languages),
        s["model"],
        pack=None if s["protocol"] == "cellbench" else False,
        seed=seed,
    ).to(device)
    train = _train_lab if s["protocol"] == "lab" else _train_cellbench
    out = train(model, s, data, seed, f"names {r.kind}/{r.backend}", show_progress)
    seen, chars, seconds = out["seen"]
    confusion = out["confusion"]
    per_class = {}
    for li, lang in enumerate(languages):
        n = int(confusion[li].sum())
        per_class[lang] = float(confusion[li, li]) / n if n else None
    known = [v for v in per_class.values() if v is not None]
    metrics = {
        **out["metrics"],
        "balanced_accuracy": sum(known) / len(known) if known else None,
        "train_time_s": seconds,
        "names_per_s": seen / seconds if seconds else None,
        "tokens_per_s": chars / seconds if seconds else None,
    }
    timings = {"train_time_s": seconds, "names": seen, "characters": chars}
    return task_record(
        "names",
        r,
        metrics,
        out["curves"],
        timings,
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        languages=languages,
        packed=bool(model.pack) and s["model"] == "cell",
        split={"train": len(data["train"]), "test": len(data["test"])}
        if s["protocol"] == "cellbench"
        else {"train": sum(map(len, data["by_language"].values())), "test": 0},
    )


COMPARED = (
    ("sampled_accuracy", "in-sample balanced accuracy"),
    ("test_accuracy", "held-out accuracy"),
)
FLAWS = (
    "The lab's accuracy is in-sample: the 10,000 names it is measured on are drawn from "
    "the training names, so it says how well the net memorised them, not how it classifies a "
    "name it has not seen; cellbench's figure is on held-out names. The lab's LSTM states no "
    "optimiser or learning rate: it runs the tutorial's SGD lr 0.005 here."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=list_of(str, "--model"),
        default=["cell"],
        help="cell (a kind/backend from cells) and/or elman (the tutorial's RNN)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="cellbench: passes over the names")
    parser.add_argument("--steps", type=int, default=100000, help="lab: names drawn (one per step)")
    parser.add_argument("--hidden", "--hidden-size", dest="hidden", type=int, default=128)
    parser.add_argument(
        "--layers",
        "--num-layers",
        dest="layers",
        type=list_of(int, "--layers"),
        default=[1],
        help="1 and/or 2 (the lab's nn.LSTM: 2)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adam", help="sgd, adam, rmsprop")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument("--max-train", type=int, default=0, help="training pairs (0: all)")


def load(args) -> Loaded:
    found = bdata.find("names", args.data)
    by_language = load_names(str(found.path))
    train, test, languages = split_names(by_language, args.test_fraction, args.split_seed)
    if args.max_train and args.max_train > 0:
        train = list(train)
        random.Random(args.split_seed).shuffle(train)
        train = train[: args.max_train]
    by_language = {k: [n for n in v if n] for k, v in by_language.items()}
    return Loaded(
        {"by_language": by_language, "train": train, "test": test, "languages": languages},
        found.source,
    )


def runs(args, data: dict) -> list[Run]:
    if args.protocol == "lab":
        s = {
            "steps": args.steps,
            "lr": LAB_LR,
            "batch_size": 1,
            "optimizer": "sgd-by-hand",
            "clip": 0.0,
            "confusion_draws": LAB_CONFUSION_DRAWS,
        }
    else:
        s = {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "clip": args.clip,
            "test_fraction": args.test_fraction,
            "split_seed": args.split_seed,
            "max_train": args.max_train,
        }
    s.update(hidden_size=args.hidden, protocol=args.protocol)
    combos = []
    for model in args.model:
        if model == "elman":  # the tutorial's own cell: recorded as kind elman, backend tutorial
            combos.append(("elman", "tutorial", 1, model))
        else:
            combos += [
                (k, b, n, model)
                for k, b, n in itertools.product(args.kinds, args.backends, args.layers)
            ]
    out = []
    for (kind, backend, layers, model), seed in itertools.product(combos, args.seeds):
        settings = {**s, "model": model, "num_layers": layers}
        if args.protocol == "lab":  # the lab's name of the model (bench.tasks.lab_numbers)
            lab_name = {"elman": "Elman", "lstm": f"nn.LSTM {layers}-layer"}.get(kind)
            settings["variant"] = lab_name or f"{kind} {layers}-layer (not in the lab)"
        out.append(Run(kind, backend, seed, settings))
    return out


def line(record: dict) -> str:
    m = record["metrics"]
    head = f"names {record['kind']}/{record['backend']} L{record['settings']['num_layers']} seed {record['seed']}"
    if record["settings"]["protocol"] == "lab":
        what = f"in-sample accuracy {m['sampled_accuracy']:.3f} over {LAB_CONFUSION_DRAWS} draws, loss {m['final_loss']:.3f}"
    else:
        what = f"test accuracy {m['test_accuracy']:.3f}, loss {m['test_loss']:.3f}"
    return f"{head}: {what}, {m['names_per_s']:.0f} names/s, {m['train_time_s']:.1f} s"


def plot(runs: list[dict], out_dir, stem: str) -> None:
    for record in runs:
        plots.names_confusion(record, out_dir)
    cellbench = [r for r in runs if r["settings"].get("protocol", "cellbench") == "cellbench"]
    if cellbench:
        plots.names_curves(cellbench, out_dir, stem)
    lab = [r for r in runs if r["settings"].get("protocol") == "lab"]
    if lab:
        plots.names_curves(lab, out_dir, f"{stem}_lab")


RULES = (
    ("model", "--model", "one of cell, elman", lambda v: v in ("cell", "elman")),
    count("epochs"),
    count("steps"),
    count("hidden"),
    count("layers"),
    count("batch_size"),
    OPTIMIZER_RULE,
    LR_RULE,
    CLIP_RULE,
    ("test_fraction", "--test-fraction", "in (0, 1)", open_unit),
    ("split_seed", "--split-seed", "an integer >= 0", at_least(0)),
    ("max_train", "--max-train", "an integer >= 0 (0: all)", at_least(0)),
)


def section(runs: list[dict], out_dir: Path) -> str:
    import pandas as pd

    from .report_section import link, protocol, table

    rows, per_class = [], {}
    for r in sorted(runs, key=lambda r: (protocol(r), r["kind"], r["backend"], r["seed"])):
        s, m = r["settings"], r["metrics"]
        label = f"{protocol(r)} {r['kind']}/{r['backend']} L{s.get('num_layers')} s{r['seed']}"
        rows.append(
            {
                "protocol": protocol(r),
                "kind": r["kind"],
                "backend": r["backend"],
                "layers": s.get("num_layers"),
                "seed": r["seed"],
                "epochs / steps": s.get("epochs") or s.get("steps"),
                "test acc (held-out)": m.get("test_accuracy"),
                "lab acc (in-sample)": m.get("sampled_accuracy"),
                "balanced acc": m.get("balanced_accuracy"),
                "names/s": m.get("names_per_s"),
                "train s": m.get("train_time_s"),
                "data": r.get("data_source"),
            }
        )
        per_class[label] = r.get("per_class_accuracy", {})
    md = [
        "## Names → language (PyTorch char-RNN tutorial)\n",
        "cellbench: de-duplicated names, stratified split with no name on both sides; accuracy on "
        "the test names (balanced: the mean of the per-class accuracies; Russian and English "
        "dominate). lab: the tutorial's class-balanced draws, accuracy over 10,000 more draws of "
        "training names (in-sample).\n",
        table(rows),
        "\nPer-class accuracy (cellbench: test names; lab: the drawn training names):\n",
        pd.DataFrame(per_class).to_markdown(floatfmt=".2f") + "\n",
    ]
    cellbench = [r for r in runs if protocol(r) == "cellbench"]
    if cellbench:
        curves = plots.names_curves(cellbench, out_dir, stem="report_names")
        md.append(link(curves, out_dir, "names curves"))
    lab = [r for r in runs if protocol(r) == "lab"]
    if lab:
        curves = plots.names_curves(lab, out_dir, stem="report_names_lab")
        md.append(link(curves, out_dir, "names curves, lab protocol"))
    for r in runs[:6]:
        md.append(
            link(
                plots.names_confusion(r, out_dir), out_dir, f"confusion {r['kind']}/{r['backend']}"
            )
        )
    return "\n".join(md)


TASK = task_spec(__name__)
