"""The records reader survives bad lines: one warning per line, never a traceback."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from bench import cli, records
from bench.measure import Case
from bench.records import RECORDS_FILE, CaseRecord, RecordError, append, iter_records, read_cases

GOOD = CaseRecord(
    **asdict(Case("rnn", "native", "infer", 3, 4, 1, 2, 3, threads=1)),
    status="ok",
    median_s=0.001,
    round_times=[0.001, 0.001],
    rounds=2,
    tokens_per_s=6000.0,
)
BAD_LINES = [
    b"42\n",
    b"null\n",
    b"[1, 2]\n",
    b"\xff\xfe\x00binary\n",
    json.dumps(
        {
            "type": "case",
            "kind": "rnn",
            "backend": "x",
            "mode": "infer",
            "input_size": 3,
            "hidden_size": 4,
        }
    ).encode()
    + b"\n",  # no status
    json.dumps(dict(GOOD.to_dict(), backend="y", median_s="fast")).encode() + b"\n",
    json.dumps(dict(GOOD.to_dict(), backend="z", status="great")).encode() + b"\n",
    b'{"type": "case", "kind": "rn',
]  # torn by an interruption


@pytest.fixture
def spoiled(tmp_path):
    out = tmp_path / "run"
    append(out, GOOD)
    with open(out / RECORDS_FILE, "ab") as f:
        for line in BAD_LINES:
            f.write(line)
    return out


def test_each_bad_line_is_one_warning_naming_file_and_line(spoiled):
    warnings: list[str] = []
    cases = read_cases([spoiled], on_bad=warnings.append)
    assert [c.backend for c in cases] == ["native"]
    assert len(warnings) == len(BAD_LINES)
    for number, text in enumerate(warnings, 2):
        assert f"{RECORDS_FILE}:{number}: skipped" in text
    assert (
        "without 'status'" in warnings[4]
        and "'median_s' should be float, got 'fast'" in warnings[5]
    )
    assert "status 'great' is not one of" in warnings[6]


def test_report_and_resume_carry_on(spoiled, tmp_path, capsys):
    assert cli.main(["report", str(spoiled), "--output", str(tmp_path / "r.md"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == len(BAD_LINES) and "Traceback" not in err
    assert (
        "| rnn" in (tmp_path / "r.md").read_text()
        or "rnn — infer" in (tmp_path / "r.md").read_text()
    )
    # resume: the good record counts as done, so nothing is measured; the bad lines only warn
    # (once per process: forget the report's warnings, as a new `bench run` process would)
    records._warned.clear()
    argv = [
        *(
            "run --kinds rnn --backends native --modes infer --input-size 3 --hidden-size 4 "
            "--batch 2 --seq-len 3 --threads 1 --in-process --no-peak --out"
        ).split(),
        str(spoiled),
        "--resume",
    ]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "0 to measure" in err and err.count("warning:") >= len(BAD_LINES)


def test_records_round_trip_and_refuse_mistyped_fields():
    assert CaseRecord.from_dict(json.loads(json.dumps(GOOD.to_dict()))) == GOOD
    with pytest.raises(RecordError, match="'rounds' should be int"):
        CaseRecord.from_dict(dict(GOOD.to_dict(), rounds=2.5))
    with pytest.raises(RecordError, match="'noisy' should be true or false"):
        CaseRecord.from_dict(dict(GOOD.to_dict(), noisy="yes"))
    with pytest.raises(RecordError, match="'input_size' should be int, got True"):
        CaseRecord.from_dict(dict(GOOD.to_dict(), input_size=True))


def test_iter_records_keeps_other_types(tmp_path):
    append(tmp_path, {"type": "task", "task": "charlm"})
    assert [r["type"] for r in iter_records([tmp_path])] == ["task"]
    with pytest.raises(FileNotFoundError, match="no records at"):
        list(iter_records([tmp_path / "missing"]))
