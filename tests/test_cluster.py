"""`python -m bench run --executor ray`: a sweep spread over a real local Ray cluster.

The cluster (ray.cluster_utils.Cluster) has a head that runs no shard and two nodes of one CPU,
each offering the resource `cellbench_node` once, so two shards never share a node. Shapes are
tiny and the timing threads 1. Ray is an optional extra (`cellbench[cluster]`): without it these
tests are skipped. They take minutes (a cluster start, and torch imported by every shard task),
so they run only when CELLBENCH_CLUSTER_TESTS=1, which `nox -s cluster` sets after installing Ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

if not os.environ.get("CELLBENCH_CLUSTER_TESTS"):
    pytest.skip(
        "the Ray cluster tests run with CELLBENCH_CLUSTER_TESTS=1 (nox -s cluster)",
        allow_module_level=True,
    )
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from bench import cli, cluster, sweep  # noqa: E402
from bench.measure import CASE_FIELDS  # noqa: E402
from bench.records import RECORDS_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = (
    "--min-run-time 0.001 --min-repeats 2 --warmup 0 --no-peak --no-memory --min-rounds 2 "
    "--max-rounds 2 --threads 1"
).split()
TINY = "--backends native,fused --modes infer --input-size 3 --hidden-size 4 --seq-len 3".split()


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A head without CPUs for shards, and two one-CPU nodes with `cellbench_node`; the shard tasks
    import this checkout, and kill themselves once per file planted in the `die` directory."""
    die = tmp_path_factory.mktemp("die")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", cluster.DIE_ENV)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    os.environ[cluster.DIE_ENV] = str(die)  # inherited by the nodes' worker processes
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=1, resources={cluster.NODE_RESOURCE: 1})
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    try:
        yield die
    finally:
        ray.shutdown()
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(*argv: str) -> int:
    return cli.main(["run", *argv])


def case_records(out: Path) -> list[dict]:
    lines = (out / RECORDS_FILE).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "case"]


def planned(*argv: str) -> list[tuple]:
    cases, _, _ = sweep.plan(cli.build_parser(["run"]).parse_args(["run", *argv]))
    return cases


def key(record: dict) -> tuple:
    """A case record's identity, as Case.key() gives it."""
    return tuple(record[name] for name in CASE_FIELDS)


def groups_of(records: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        k = key(r)
        groups.setdefault(k[:1] + k[2:], []).append(r)
    return groups


def test_four_shards_give_the_planned_cases_unsplit_and_resume_measures_nothing(
    local_cluster, tmp_path, capsys
):
    out = tmp_path / "ray"
    grid = [*TINY, "--kinds", "rnn,gru,lstm", "--batch", "1,2", *FAST]
    assert run(*grid, "--executor", "ray", "--shard-count", "4", "--out", str(out)) == 0
    records = case_records(out)
    assert sorted(map(key, records)) == sorted(c.key() for c in planned(*grid))  # each case once
    assert {r["status"] for r in records} == {"ok"}
    for group in groups_of(
        records
    ).values():  # a group: one shard, one run, one machine; its own ratio
        assert len({(r["shard"], r["run_id"], r["machine"]) for r in group}) == 1, group
        assert len(group) == 2 and all(r["ratio_to_native"] for r in group)
        assert {r["shard"] for r in group} <= {f"{k}/4" for k in range(1, 5)}
    runs = [
        json.loads(line)
        for line in (out / RECORDS_FILE).read_text().splitlines()
        if json.loads(line)["type"] == "run"
    ]
    assert {r["shard"] for r in runs} == {
        r["shard"] for r in records
    }  # each node's environment kept
    capsys.readouterr()
    assert run(*grid, "--executor", "ray", "--shard-count", "4", "--out", str(out), "--resume") == 0
    assert "all already recorded, 0 to measure" in capsys.readouterr().err
    assert len(case_records(out)) == len(records)  # nothing measured again
    assert cli.main(["report", str(out), "--no-plots"]) == 0
    text = (out / "report.md").read_text()
    assert "## gru — infer" in text and "| fused" in text


def test_a_killed_task_is_run_again_and_its_group_measured(local_cluster, tmp_path):
    out = tmp_path / "ray"
    (local_cluster / "once").write_text("")  # the first shard to deliver a group dies right after
    grid = [*TINY, "--kinds", "rnn,gru", *FAST]
    assert run(*grid, "--executor", "ray", "--shard-count", "1", "--out", str(out)) == 0
    assert not (local_cluster / "once").exists()
    records = case_records(out)
    assert sorted(map(key, records)) == sorted(c.key() for c in planned(*grid))
    assert {r["status"] for r in records} == {"ok"}
    # the first attempt delivered one group, then died while the other was in flight: the retry
    # (a new run) measured that whole group
    assert len({r["run_id"] for r in records}) == 2
    for group in groups_of(records).values():
        assert len({r["run_id"] for r in group}) == 1


def test_a_task_that_dies_twice_leaves_failed_records_and_resume_measures_them(
    local_cluster, tmp_path
):
    out = tmp_path / "ray"
    for name in ("first", "second"):
        (local_cluster / name).write_text("")
    grid = [*TINY, "--kinds", "rnn,gru,lstm", *FAST]
    assert run(*grid, "--executor", "ray", "--shard-count", "1", "--out", str(out)) == 1
    records = case_records(out)
    assert sorted(map(key, records)) == sorted(c.key() for c in planned(*grid))
    failed = [r for r in records if r["status"] == "failed"]
    # each attempt delivered one group before dying; the third group's cases are failed
    assert len(failed) == 2 and all("failed twice" in r["error"] for r in failed)
    assert len({r["run_id"] for r in records if r["status"] == "ok"}) == 2
    assert (
        run(
            *grid,
            *"--executor ray --shard-count 1 --out".split(),
            str(out),
            "--resume",
            "--retry-failed",
        )
        == 0
    )
    assert {r["status"] for r in case_records(out)[len(records) :]} == {"ok"}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--executor", "ray", "--shard", "1/2"], "exclude each other"),
        (["--shard-count", "2"], "--shard-count needs --executor ray"),
        (["--executor", "ray", "--shard-count", "0"], "expected an integer >= 1"),
    ],
)
def test_bad_combinations_are_usage_errors(argv, fragment, tmp_path, capsys):
    assert run(*TINY, "--kinds", "rnn", *FAST, "--out", str(tmp_path), *argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / RECORDS_FILE).exists()
