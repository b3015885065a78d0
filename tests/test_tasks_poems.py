"""poems: the lab's filters, vocabulary, generation, the CLI; plus the suite and report section."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from conftest import needs_data
from tasks_cli import records, train

from bench import data as bdata
from bench.cli import main as bench_main
from bench.tasks import poems, report_section, runner, suite

FIXTURES = Path(__file__).parent / "fixtures"
needs_poems = needs_data("poems_tang.txt", "poems_tang.txt")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_lab_filters():
    kept = poems.parse_poems((FIXTURES / "poems_sample.txt").read_text(encoding="utf-8"))
    assert kept[0] == "G床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。E"
    assert [len(p) - 2 for p in kept] == [24, 80, 12]  # 5..80 kept, 81 and 3 dropped
    assert kept[2].startswith("G春眠")  # spaces removed
    assert not any(bad in p[1:-1] for p in kept for bad in poems.BAD)


def test_vocab_and_generation_stop():
    vocab = poems.CharVocab(["G春眠不覺曉E", "G處處聞啼鳥E"])
    assert vocab.idx_to_token[:2] == [" ", "<unk>"] and vocab.encode("春X") == [
        vocab.token_to_idx["春"],
        1,
    ]
    model = poems.PoemLM("gru", "native", len(vocab), embed=8, hidden_size=8, seed=0)
    text = poems.generate(model, vocab, "春", max_len=12, sample=torch.Generator().manual_seed(0))
    assert text.startswith("春") and 1 <= len(text) <= 12 and "E" not in text
    with torch.no_grad():
        model.head.bias.fill_(-1e4)
        model.head.bias[vocab.token_to_idx["E"]] = 1e4
    assert poems.generate(model, vocab, "春") == "春"  # greedy


TINY = dict(epochs=1, hidden=8, embed=8, max_gen=5, begin="日")


@needs_poems
def test_cli_small_run(tmp_path):
    out = tmp_path / "p"
    options = {**TINY, "hidden": 16, "max_gen": 10, "begin": "日山"}
    assert train("poems", out, kind="gru", max_poems=60, lab_loop_poems=4, **options) == 0
    (r,) = records(out)
    assert r["task"] == "poems" and r["filtered_poems"] > 40000
    assert r["metrics"]["test_perplexity"] > 1 and r["metrics"]["lab_loop_tokens_per_s"] > 0
    assert set(r["samples"]) == {"日", "山"} and all(len(t) <= 10 for t in r["samples"].values())


def test_lab_protocol_is_the_labs_recipe(tmp_path):
    """--protocol lab: simplified characters, the lab's batch, clip and head, no held-out poem,
    its targets end with an extra E -> E, and generation starts from the begin character alone."""
    x, y = poems._batch([[5, 6, 7]], repeat_last=True)
    assert x[:, 0].tolist() == [5, 6, 7] and y[:, 0].tolist() == [6, 7, 7]
    x, y = poems._batch([[5, 6, 7]])
    assert x[:, 0].tolist() == [5, 6] and y[:, 0].tolist() == [6, 7]
    model = poems.PoemLM("lstm", "native", 30, 4, 4, seed=0, lab=True)
    scores, _ = model(torch.randint(0, 30, (3, 2)))
    assert float(scores.detach().min()) >= 0.0  # the lab's ReLU before the LogSoftmax
    assert float(model.head.bias.detach().abs().sum()) == 0.0
    assert 0.9 < float(model.embedding.weight.detach().abs().max()) <= 1.0  # U(-1, 1), not N(0, 1)
    out = tmp_path / "lab"
    options = {**TINY, "begin": "紅"}
    assert (
        train(
            "poems",
            out,
            protocol="lab",
            corpus="sample",
            max_poems=30,
            lab_loop_poems=0,
            no_plots=True,
            **options,
        )
        == 0
    )
    (r,) = records(out)
    s = r["settings"]
    assert r["protocol"] == "lab" and s["script"] == "simplified"
    assert (s["batch_size"], s["clip"], s["optimizer"], s["lr"], s["greedy"]) == (
        100,
        1.0,
        "rmsprop",
        0.01,
        True,
    )
    assert r["split"] == {"train": 30, "test": 0} and r["metrics"]["test_perplexity"] is None
    assert set(r["samples"]) == {"紅"}  # a given begin character is kept as given
    assert poems.lab_batches([[1, 2, 3], [1], [1, 2]], 2) == [[[1], [1, 2]], [[1, 2, 3]]]
    md = report_section.render([out], tmp_path / "report")  # no held-out curve to plot
    assert "## Tang poetry" in md and "### Lab vs cellbench" in md and "could not" not in md
    assert "2-layer LSTM hidden 128" in md and "6.0-6.3" in md  # the lab's figure beside ours


def test_lab_loss_is_the_mean_of_each_poems_mean():
    """The lab runs each poem of a batch alone and sums their mean losses / batch size; one
    padded batch must give the same number."""
    torch.manual_seed(0)
    logits = torch.randn(4, 2, 6)
    y = torch.tensor([[1, 2], [3, 4], [5, -100], [1, -100]])
    loss, summed, n = poems._loss(logits, y, lab_batch=100)
    each = [torch.nn.functional.cross_entropy(logits[:k, b], y[:k, b]) for b, k in ((0, 4), (1, 2))]
    assert float(loss) == pytest.approx(float(sum(each)) / 100, rel=1e-6)
    assert n == 6 and summed == pytest.approx(float(each[0] * 4 + each[1] * 2), rel=1e-6)


def test_suite_argument_lists_parse():
    for mode in ("short", "full"):
        for task in runner.TASKS:
            parser = parser_for(task)
            for argv in suite.task_argvs(task, mode, "/tmp/x", "lstm", "native,fused", True):
                args = parser.parse_args(argv)
                assert args.resume and args.backends == ["native", "fused"]


def test_full_suite_runs_each_lab_at_its_own_settings():
    """--full: for every task a lab-protocol run, a cellbench run, and a naive/native pair
    (the speed ratio); main runs get FULL_BACKEND; several seeds for aⁿbⁿ."""
    for task in runner.TASKS:
        parser = parser_for(task)
        runs = [parser.parse_args(a) for a in suite.task_argvs(task, "full", "/tmp/x", None, None)]
        protocols = [a.protocol for a in runs]
        assert protocols.count("lab") >= 1 and "cellbench" in protocols, task
        assert ["naive", "native"] in [a.backends for a in runs], task
        assert all(a.backends in (["naive", "native"], [suite.FULL_BACKEND[task]]) for a in runs)
        assert all(a.suite == "full" for a in runs)
    parser = parser_for("anbn")
    anbn = [parser.parse_args(a) for a in suite.task_argvs("anbn", "full", "/x", None, None)]
    lab = [a for a in anbn if a.protocol == "lab" and a.steps is None]  # the lab's counts
    assert sorted(k for a in lab for k in a.kinds) == ["lstm", "rnn"]
    assert all(len(a.seeds) >= 3 for a in lab)


def parser_for(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    runner.configure(parser, runner.spec(task))
    return parser


def test_suite_rejects_unknown_task(tmp_path, capsys):
    assert bench_main(["tasks", "--short", "--tasks", "chess", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --tasks: unknown task(s) chess; expected any of charlm, names, anbn, poems"
    ]
    assert not (tmp_path / "records.jsonl").exists()


def test_cli_runs_on_the_shipped_sample_without_data(tmp_path, monkeypatch):
    """No $CELLBENCH_DATA, an empty cache: --corpus auto falls back to the shipped sample, never
    to a download, and the record says so."""
    monkeypatch.delenv("CELLBENCH_DATA", raising=False)
    monkeypatch.delenv("CELLBENCH_OFFLINE", raising=False)
    monkeypatch.setenv("CELLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLBENCH_POEMS_URL", "http://127.0.0.1:9/")
    out = tmp_path / "p"
    rc = train(
        "poems", out, backend="native", max_poems=40, lab_loop_poems=0, no_plots=True, **TINY
    )
    assert rc == 0
    (r,) = records(out)
    assert r["data_source"] == "embedded" and r["settings"]["corpus"] == "sample"
    assert 2000 < r["filtered_poems"] < 3000 and r["split"] == {"train": 38, "test": 2}
    assert poems.find_corpus("sample").source == "embedded"
    with pytest.raises(bdata.DataError, match="cannot download"):
        poems.find_corpus("full")
    with pytest.raises(
        ValueError, match="unknown --corpus 'all'; expected one of auto, full, sample"
    ):
        poems.find_corpus("all")


def test_report_section_renders_every_task(tmp_path):
    out = tmp_path / "runs"
    assert train("anbn", out, seeds="0", steps=5, n_eval=5) == 0
    fake = {
        "type": "task",
        "task": "names",
        "kind": "lstm",
        "backend": "native",
        "seed": 0,
        "run_key": "x",
        "settings": {"num_layers": 1, "epochs": 1},
        "metrics": {"test_accuracy": 0.5, "test_loss": 1.0},
        "timings": {},
        "curves": {
            "epoch": [1],
            "train_loss": [1.0],
            "test_loss": [1.1],
            "train_accuracy": [0.4],
            "test_accuracy": [0.5],
        },
        "confusion": [[1, 0], [1, 0]],
        "languages": ["A", "B"],
        "per_class_accuracy": {"A": 1.0, "B": 0.0},
    }
    from bench import records

    records.append(out, fake)
    md = report_section.render([out], tmp_path / "report")
    assert "## aⁿbⁿ" in md and "## Names" in md and "| lstm" in md
    for link in [
        line[line.index("(") + 1 : -1] for line in md.splitlines() if line.startswith("![")
    ]:
        assert (tmp_path / "report" / link).is_file()
    assert report_section.render([tmp_path / "report"], tmp_path / "r2") == ""
