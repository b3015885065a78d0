"""bench.tasks.verdict: the verdict follows the stated tolerance for each kind of lab figure."""

from __future__ import annotations

import pytest

from bench.tasks import lab_numbers, verdict


def _figure(task: str, variant: str, metric: str) -> lab_numbers.LabFigure:
    found = [f for f in lab_numbers.for_task(task) if (f.variant, f.metric) == (variant, metric)]
    return max(found, key=lambda f: f.epoch or 0)


@pytest.mark.parametrize(
    ("value", "said"),
    [(1.05, "agrees"), (1.39, "agrees"), (1.41, "differs"), (0.79, "differs")],
)
def test_perplexity_within_0_3_at_low_values(value, said):
    figure = _figure("charlm", "concise LSTM", lab_numbers.TRAIN_PPL)  # 1.1 at epoch 500
    assert verdict.judge(figure, [value], 500)[0] == said


@pytest.mark.parametrize(("value", "said"), [(12.3, "agrees"), (12.5, "differs"), (7.5, "agrees")])
def test_perplexity_within_25_percent_at_high_values(value, said):
    figure = _figure("charlm", "concise LSTM lr 0.1", lab_numbers.TRAIN_PPL)  # 9.9: +-2.475
    assert verdict.judge(figure, [value], 500)[0] == said


def test_median_over_seeds_is_judged():
    figure = _figure("charlm", "concise LSTM", lab_numbers.TRAIN_PPL)
    assert verdict.judge(figure, [1.0, 1.1, 9.0], 500)[0] == "agrees"
    assert verdict.judge(figure, [1.0, 9.0, 9.0], 500)[0] == "differs"


@pytest.mark.parametrize(
    ("value", "said"), [(0.64, "agrees"), (0.66, "differs"), (0.33, "differs")]
)
def test_accuracy_within_0_05(value, said):
    figure = _figure("names", "Elman", "in-sample balanced accuracy")  # about 0.60
    assert verdict.judge(figure, [value], 100000)[0] == said


def test_capacity_lower_bound_needs_a_seed_that_reaches_it():
    figure = _figure("anbn", "LSTM hidden 2", "capacity (lab reading)")  # >=19
    said, why = verdict.judge(figure, [12.0, 52.0, 15.0, 14.0, 13.0], 40000)
    assert said == "agrees" and "1 of 5 seeds reach 19" in why
    assert verdict.judge(figure, [12.0, 18.0, 15.0], 40000)[0] == "differs"


def test_capacity_about_needs_the_range_to_hold_it():
    figure = _figure("anbn", "RNN hidden 2", "capacity (lab reading)")  # about 14
    assert verdict.judge(figure, [2.0, 13.0, 14.0], 100000)[0] == "agrees"
    assert verdict.judge(figure, [2.0, 10.0, 13.0], 100000)[0] == "differs"


def test_poems_band_and_fewer_epochs():
    figure = _figure("poems", "2-layer LSTM hidden 128", "train loss")  # 6.0-6.3 at epoch 59
    said, why = verdict.judge(figure, [6.6], 4)
    assert said == "not reached" and "ran 4 of the lab's 59 epochs" in why
    assert verdict.judge(figure, [6.2], 60)[0] == "agrees"
    assert verdict.judge(figure, [6.4], 60)[0] == "differs"
    assert "epoch 59" in verdict.evidence("poems", [], [])


def test_no_figure_and_not_run():
    assert verdict.judge(None, [1.0], 500)[0] == "no lab figure"
    figure = _figure("charlm", "concise LSTM", lab_numbers.TRAIN_PPL)
    assert verdict.judge(figure, [], None)[0] == "not run"


def test_names_evidence_reads_the_loss_curve():
    lstm = {
        "kind": "lstm",
        "settings": {"protocol": "lab"},
        "metrics": {"final_loss": 2.0},
        "curves": {"loss": [3.0 - 0.05 * i for i in range(20)]},
    }
    elman = {"kind": "elman", "settings": {"protocol": "lab"}, "metrics": {"final_loss": 1.3}}
    text = verdict.evidence("names", [lstm], [lstm, elman])
    assert "final training loss 2.00" in text and "Elman's under the lab protocol: 1.30" in text
    assert "still falling" in text and "another optimiser" in text
