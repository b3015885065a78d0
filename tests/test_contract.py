"""The torch.nn contract of `bench validate` (bench/contract.py).

Every built-in backend and the correct stepwise candidates keep every clause; each planted bug
(tests/candidates/contract_bugs.py) passes equivalence yet fails exactly the check it targets,
and validate rejects it naming that check in its one-line reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cells  # noqa: E402
from bench import contract as C  # noqa: E402
from bench import validate as V  # noqa: E402
from bench.cli import main as cli  # noqa: E402
from cells.capabilities import capabilities_of, type_of  # noqa: E402
from tests.candidates import contract_bugs, stepwise  # noqa: E402

BUGS = "tests.candidates.contract_bugs"
PLANTED = {  # check -> the candidate that breaks only it
    "dtype-device": "Float64OutLSTM",
    "inputs-unchanged": "HxWriteBackLSTM",
    "non-contiguous": "AsStridedLSTM",
    "requires-grad": "HxIgnoredWithoutGradLSTM",
    "grad-accumulation": "GradScratchLSTM",
    "same-call-twice": "CarriedStateLSTM",
    "new-shapes": "FirstBatchLSTM",
    "train-eval": "DropoutInEvalLSTM",
    "thread-count": "ThreadDependentLSTM",
    "determinism": "NondeterministicLSTM",
    "state-dict": "CallCounterLSTM",
    "module-copies": "PackedAtFirstCallLSTM",
}
BUILTIN = [
    (kind, backend)
    for kind in cells.KINDS
    for backend in cells.backends(kind)
    if backend in cells.registry.BUILTIN
]


def test_every_check_is_described_and_has_a_planted_bug():
    names = [c.name for c in C.CONTRACT]
    assert len(set(names)) == len(names) == len(PLANTED) and set(names) == set(PLANTED)
    assert all(c.condition and c.criterion for c in C.CONTRACT)
    assert all(hasattr(contract_bugs, cls) for cls in PLANTED.values())


def out_of_scope(kind: str, backend: str) -> str:
    """Why the float64 contract does not apply: a backend that declares no float64 or no
    training (the peers of cells/kernels/peer_base.py) is not a full torch.nn drop-in."""
    cls = type_of(kind, backend)
    if torch.float64 not in capabilities_of(cls, backend).dtypes:
        return f"{backend} declares no float64 (cells.capabilities): the contract runs in float64"
    if getattr(cls, "inference_only", False):
        return f"{backend} is inference-only: the contract checks gradients"
    return ""


@pytest.mark.parametrize("kind, backend", BUILTIN, ids=[f"{k}-{b}" for k, b in BUILTIN])
def test_builtin_backend_keeps_the_contract(kind, backend, record_property):
    if out_of_scope(kind, backend):
        pytest.skip(out_of_scope(kind, backend))
    verdicts = C.run_contract(cells.get(kind, backend), kind, device="cpu")
    assert [v.name for v in verdicts] == [c.name for c in C.CONTRACT]
    for v in verdicts:  # thread-count and determinism figures per backend, in the junit report
        record_property(v.name, f"{v.status}: {v.detail}")
    assert [f"{v.name}: {v.status}: {v.detail}" for v in verdicts if v.status != "pass"] == []


@pytest.mark.parametrize(
    "factory, kind",
    [(stepwise.StepLSTM, "lstm"), (stepwise.make_gru, "gru"), (stepwise.StepRNN, "rnn")],
    ids=["lstm", "gru", "rnn"],
)
def test_stepwise_candidates_keep_the_contract(factory, kind):
    verdicts = {v.name: v for v in C.run_contract(factory, kind, device="cpu")}
    # stepwise refuses dropout at construction: unsupported, not failed
    dropout = verdicts.pop("train-eval")
    assert dropout.status == "unsupported" and dropout.detail.startswith(
        "dropout: construction raised"
    )
    assert {n: v.status for n, v in verdicts.items() if v.status != "pass"} == {}


def test_required_option_turns_unsupported_into_a_failure():
    (verdict,) = C.run_contract(
        stepwise.StepLSTM,
        "lstm",
        required={"dropout"},
        device="cpu",
        checks=tuple(c for c in C.CONTRACT if c.name == "train-eval"),
    )
    assert verdict.status == "fail" and "required option dropout is unsupported" in verdict.detail


@pytest.mark.parametrize("check, cls", PLANTED.items(), ids=list(PLANTED))
def test_validate_rejects_the_planted_bug_naming_its_check(check, cls, tmp_path):
    try:
        v = V.validate(
            f"{BUGS}:{cls}",
            "lstm",
            quick=True,
            train=False,
            run_speed=False,
            device="cpu",
            out=tmp_path,
            progress=lambda s: None,
        )
    finally:
        cells.unregister("lstm", "candidate")
    # correct everywhere else: the whole equivalence matrix passes ...
    assert {c.status for c in v["checks"]} <= {"pass", "skipped"}
    # ... and of the contract, exactly the planted check fails
    assert [c.name for c in v["contract"] if c.status == "fail"] == [check]
    assert not v["passed"] and v["reason"].startswith(f"contract: {check}: ")
    assert "\n" not in v["reason"]
    report = (tmp_path / "validate.md").read_text()
    assert "## Contract" in report and f"| {check} |" in report and "**FAIL**" in report


def test_cli_names_the_failed_check(tmp_path, capsys):
    common = ["--kind", "lstm", "--quick", "--no-speed", "--no-train", "--device", "cpu", "--out"]
    try:
        assert cli(["validate", f"{BUGS}:GradScratchLSTM", *common, str(tmp_path / "bad")]) == 1
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith(
            "validate: FAIL: contract: grad-accumulation: .grad after 2 backward"
        )
        assert (
            cli(["validate", "tests.candidates.stepwise:StepLSTM", *common, str(tmp_path / "ok")])
            == 0
        )
        assert "unsupported: train-eval (dropout)" in capsys.readouterr().out
        from bench.records import frame

        record = frame([tmp_path / "ok"], "validate").iloc[0]
        assert {c["name"]: c["status"] for c in record["contract"]}["train-eval"] == "unsupported"
    finally:
        cells.unregister("lstm", "candidate")


def test_failure_reason_names_the_first_failure_and_the_others():
    verdicts = [
        C.ContractVerdict("a", "", "", "pass", "ok"),
        C.ContractVerdict("b", "", "", "fail", "why"),
        C.ContractVerdict("c", "", "", "unsupported", "x"),
        C.ContractVerdict("d", "", "", "fail", "y"),
    ]
    assert C.failure_reason(verdicts) == "contract: b: why (also failed: d)"
    assert C.failure_reason(verdicts[:1]) == ""


def test_a_check_that_raises_fails_with_where_it_was():
    def broken(input_size, hidden_size, **kwargs):
        module = torch.nn.LSTM(input_size, hidden_size, **kwargs)
        module.forward = lambda *a: (_ for _ in ()).throw(RuntimeError("kernel exploded"))
        return module

    (verdict,) = C.run_contract(broken, "lstm", device="cpu", checks=C.CONTRACT[:1])
    assert verdict.status == "fail"
    assert verdict.detail == "float32 input, hx given: raised RuntimeError: kernel exploded"


def test_threads_are_restored():
    before = torch.get_num_threads()
    with C.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
