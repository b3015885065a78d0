"""charlm: d2l's preprocessing and iterators, backend parity, the CLI and its records."""

from __future__ import annotations

import math

import pytest
import torch
from tasks_cli import records, train

from bench.cli import main as bench_main
from bench.tasks import charlm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_d2l_corpus_and_vocab():
    corpus, vocab = charlm.load_time_machine(max_tokens=0)
    assert len(corpus) == 170580 and len(vocab) == 28
    assert vocab.idx_to_token[:5] == ["<unk>", " ", "e", "t", "a"]
    head, _ = charlm.load_time_machine()
    assert head == corpus[:10000]
    assert "".join(vocab.to_tokens(corpus[:16])) == "the time machine"


def test_split_does_not_overlap():
    train, val, vocab = charlm.load_split(10000, 0.1)
    full, _ = charlm.load_time_machine(0)
    assert len(train) == 10000 and len(val) == 17058
    assert val == full[-len(val) :] and len(train) + len(val) <= len(full)


def test_preprocess_is_d2ls():
    assert charlm.preprocess("The Time-Machine, by H. G. Wells [1898]\n\nI.") == [
        "the time machine by h g wells",
        "",
        "i",
    ]


def test_sequential_batches_continue_each_other():
    corpus = list(range(1000))
    pairs = list(charlm.batches(corpus, batch_size=4, num_steps=5, seed=3))
    assert all(X.shape == (4, 5) and Y.shape == (4, 5) and X.dtype == torch.long for X, Y in pairs)
    for X, Y in pairs:
        assert torch.equal(Y, X + 1)
    for (X1, _), (X2, _) in zip(pairs, pairs[1:]):
        assert torch.equal(X2[:, 0], X1[:, -1] + 1)  # row i of batch k+1 continues row i of batch k
    again = list(charlm.batches(corpus, 4, 5, seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(pairs, again))


def test_random_batches_cover_disjoint_subsequences():
    corpus = list(range(1000))  # token i is i: every value says where it comes from
    pairs = list(charlm.batches(corpus, batch_size=4, num_steps=5, random=True, seed=1))
    starts = sorted(int(x) for X, _ in pairs for x in X[:, 0])
    offset = starts[0] % 5
    assert [s % 5 for s in starts] == [offset] * len(starts)  # one random offset per epoch
    # d2l: (len - offset - 1) // num_steps subsequences, all of them in whole batches of 4
    assert len(pairs) == ((999 - offset) // 5) // 4
    # disjoint: no two subsequences share a token (consecutive starts at least num_steps apart)
    assert all(b - a >= 5 for a, b in zip(starts, starts[1:]))
    tokens = [int(v) for X, _ in pairs for v in X.flatten()]
    assert len(tokens) == len(set(tokens)) == len(pairs) * 4 * 5
    for X, Y in pairs:
        assert torch.equal(Y, X + 1)
        assert torch.equal(X, X[:, :1] + torch.arange(5))  # each row is a contiguous run


def test_charlm_model_shapes_and_same_init_across_backends():
    a = charlm.CharLM("gru", "native", 28, 16, num_layers=2, seed=5)
    b = charlm.CharLM("gru", "fused", 28, 16, num_layers=2, seed=5)
    for (na, pa), (nb, pb) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        assert na == nb and torch.equal(pa, pb)
    X = torch.randint(0, 28, (3, 7))
    logits, state = a(X)
    assert logits.shape == (7 * 3, 28) and state.shape == (2, 3, 16)


@pytest.mark.parametrize("init", ["normal", "xavier", "kaiming"])
def test_inits(init):
    """Each scheme leaves its own signature: zero biases, and weights whose spread is N(0, 0.01)'s,
    or U(-b, b) with b = sqrt(6 / (fan_in + fan_out)) (Xavier) or sqrt(6 / fan_in) (Kaiming, ReLU
    gain): for LSTM(28 -> 64) the recurrent weights are (256, 64), b = 0.137 or 0.306."""
    m = charlm.CharLM("lstm", "native", 28, 64, init=init, seed=0)
    for name, p in m.named_parameters():
        if "bias" in name:
            assert float(p.detach().abs().sum()) == 0.0, name
    w = m.rnn.weight_hh_l0.detach()
    fan_out, fan_in = w.shape
    bound = {
        "normal": None,
        "xavier": math.sqrt(6 / (fan_in + fan_out)),
        "kaiming": math.sqrt(6 / fan_in),
    }[init]
    if bound is None:
        assert float(w.std()) == pytest.approx(0.01, rel=0.05)
        assert float(w.mean()) == pytest.approx(0.0, abs=1e-3)
    else:
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.99 * bound  # 16k draws reach the edge
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)  # uniform's std
    # the head too: Linear(64 -> 28) has fan_in 64, fan_out 28
    head = m.linear.weight.detach()
    if init == "xavier":
        assert float(head.abs().max()) <= math.sqrt(6 / (64 + 28))
    elif init == "kaiming":
        assert float(head.abs().max()) > math.sqrt(6 / (64 + 28))  # beyond Xavier's bound
        assert float(head.abs().max()) <= math.sqrt(6 / 64)


def test_native_and_fused_follow_the_same_trajectory():
    """Same seed -> same init and batches: the perplexity curves agree up to float32 noise."""
    corpus, vocab = charlm.load_time_machine(max_tokens=3000)
    curves = {}
    for backend in ("native", "fused"):
        torch.manual_seed(0)
        model = charlm.CharLM("lstm", backend, len(vocab), 32, seed=0)
        curves[backend] = charlm.train(
            model, corpus, epochs=4, batch_size=8, num_steps=10, lr=1.0, seed=0, show_progress=False
        )["perplexity"]
    assert curves["native"][-1] < curves["native"][0]
    assert curves["native"] == pytest.approx(curves["fused"], rel=1e-4)


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_parity_without_data(kind):
    """The same check on a synthetic corpus (runs even without the data), random iterator."""
    corpus = [
        int(v) for v in torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(1))
    ]
    curves = {}
    for backend in ("native", "fused", "naive"):
        model = charlm.CharLM(kind, backend, 10, 16, num_layers=2, seed=3)
        curves[backend] = charlm.train(
            model,
            corpus,
            epochs=2,
            batch_size=4,
            num_steps=8,
            lr=0.5,
            random_iter=True,
            seed=2,
            show_progress=False,
        )["perplexity"]
    assert curves["native"] == pytest.approx(curves["fused"], rel=1e-4)
    assert curves["native"] == pytest.approx(curves["naive"], rel=1e-4)


def test_cli_writes_a_complete_record(tmp_path):
    out = tmp_path / "run"
    small = dict(epochs=2, hidden=16, max_tokens=2000, val_fraction=0.02, num_preds=5)
    assert train("charlm", out, kind="rnn", backend="native", optimizer="sgd,adam", **small) == 0
    recs = records(out)
    assert len(recs) == 2
    for r in recs:
        assert r["type"] == "task" and r["task"] == "charlm" and r["kind"] == "rnn"
        assert r["protocol"] == "cellbench" and r["device"] == "cpu"
        assert len(r["curves"]["perplexity"]) == 2
        for key in (
            "perplexity",
            "val_perplexity",
            "train_time_s",
            "tokens_per_s",
            "predict_time_s",
        ):
            assert r["metrics"][key] > 0
        assert set(r["samples"]) == set(charlm.PREFIXES)
        sample = r["samples"]["time traveller"]["text"]
        assert sample.startswith("time traveller") and len(sample) == len("time traveller") + 5
    assert {r["settings"]["optimizer"] for r in recs} == {"sgd", "adam"}
    assert (out / "charlm_cellbench_ppl.png").is_file()
    # --resume skips both
    assert train("charlm", out, kind="rnn", optimizer="sgd,adam", resume=True, **small) == 0
    assert len(records(out)) == 2


BAD_INPUT = [
    (dict(backend="nope"), "unknown backend 'nope'"),
    (dict(kind="tanh"), "unknown cell kind 'tanh'"),
    (dict(init="zeros"), "--init must be one of default, normal, xavier, kaiming, got 'zeros'"),
    (dict(data="/nonexistent/missing", epochs=1), "no such file"),
    (dict(random_iter=True, max_tokens=500, epochs=1), "holds no batch of 32 x 35"),
    (dict(protocol="lab", variant="concise-lstm,huge"), "--variant must be among concise-lstm"),
]


@pytest.mark.parametrize("options, message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_cli_bad_input_is_a_clear_error(tmp_path, capsys, options, message):
    assert train("charlm", tmp_path, **options) == 2
    assert message in capsys.readouterr().err


def test_unknown_task_is_refused(tmp_path, capsys):
    assert bench_main(["train", "chess", "--out", str(tmp_path)]) == 2
    assert "invalid choice: 'chess'" in capsys.readouterr().err


def test_lab_protocol_runs_the_labs_variants_with_their_kind_and_recipe(tmp_path):
    """--protocol lab: each variant's settings are the lab's (bench.tasks.lab_numbers), its
    kind is the variant's whatever --kind says, and every record says which protocol ran."""
    from bench.tasks import lab_numbers

    out = tmp_path / "lab"
    variants = "concise-rnn,scratch-lstm-adam-lr-0.001"
    assert (
        train(
            "charlm",
            out,
            protocol="lab",
            variant=variants,
            kind="gru",
            epochs=1,
            num_preds=2,
            no_plots=True,
        )
        == 0
    )
    recs = records(out)
    assert [(r["kind"], r["settings"]["variant"]) for r in recs] == [
        ("rnn", "concise RNN"),
        ("lstm", "scratch LSTM Adam lr 0.001"),
    ]
    for r in recs:
        lab = lab_numbers.settings("001" if r["kind"] == "rnn" else "000", r["settings"]["variant"])
        s = r["settings"]
        assert r["protocol"] == s["protocol"] == "lab"
        assert (s["optimizer"], s["lr"], s["init"], s["hidden_size"], s["batch_size"]) == (
            lab.optimizer,
            lab.lr,
            lab.init,
            lab.hidden,
            lab.batch,
        )
        assert s["max_tokens"] == 10000 and r["corpus"]["train_tokens"] == 10000


def test_cuda_is_refused_clearly_where_there_is_none(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train("charlm", tmp_path / "c", device="cuda", epochs=1) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --device cuda: torch sees no CUDA device here")
    assert not (tmp_path / "c").exists()  # refused before any work


def _fake_run(variant: str, epochs: int, protocol: str = "lab", backend: str = "native") -> dict:
    settings = {"variant": variant, "hidden_size": 256, "num_layers": 1, "epochs": epochs}
    curves = {
        "epoch": list(range(1, epochs + 1)),
        "perplexity": [20.0 / e for e in range(1, epochs + 1)],
        "val_epoch": [epochs],
        "val_perplexity": [9.0],
    }
    return {
        "protocol": protocol,
        "kind": "lstm",
        "backend": backend,
        "seed": 0,
        "settings": settings,
        "curves": curves,
        "metrics": {"perplexity": 1.0},
    }


def test_report_plots_the_labs_points_and_leaves_out_speed_pairs(tmp_path, monkeypatch):
    from bench.tasks import plots

    calls = []
    monkeypatch.setattr(plots, "charlm_perplexity", lambda *a, **k: calls.append(a) or [])
    runs = [_fake_run("scratch LSTM", 20), _fake_run("concise LSTM", 3, backend="naive")]
    charlm.section(runs, tmp_path)
    lab_curves = calls[0][3]
    assert lab_curves["scratch LSTM"][0] == (50, 14.5)  # lab 9.2's curve, not lab 000's end point
    assert len(lab_curves["scratch LSTM"]) == 10 and lab_curves["concise LSTM"] == [(500, 1.1)]
    monkeypatch.undo()

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    runs += [_fake_run("concise LSTM", 20), _fake_run("", 20, protocol="cellbench")]
    paths = plots.charlm_perplexity(runs, tmp_path, "r", {"scratch LSTM": [(5, 4.0), (10, 2.0)]})
    assert [p.name for p in paths] == ["r_lab_ppl.png", "r_cellbench_ppl.png"]
    lab_axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in lab_axes) == [
        "concise LSTM (lstm/native)",  # the 3-epoch naive speed pair is no curve
        "scratch LSTM (lstm/native)",
    ]
    scratch = next(ax for ax in lab_axes if ax.get_title().startswith("scratch"))
    assert [len(line.get_xdata()) for line in scratch.get_lines()] == [20, 2]  # run, lab's points
    ours = figures[1].axes[0]
    assert [line.get_label() for line in ours.get_lines()] == [
        "lstm/native s0 H256 L1 train",
        "lstm/native s0 H256 L1 validation",
    ]
