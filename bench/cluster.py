"""`python -m bench run --executor ray`: a sweep spread over a Ray cluster, one shard per node or GPU.

The planned cases are split into `--shard-count` shards by comparison group (`bench.sweep.shard_of`,
the same split as `--shard K/N`), so a group's interleaved rounds always run together, in one worker
on one node. Each shard is one Ray task that asks for a whole node (the custom resource
`cellbench_node`, or else as many CPUs as the largest node has) or, for CUDA sweeps, one whole GPU:
no two timing shards ever share cores or a GPU. Ray queues the shards on the free nodes; this
module schedules nothing itself.

A shard task runs the ordinary worker-isolated sweep (`bench.sweep.run_sweep`) into a node-local
temporary directory and sends each comparison group's records, once all of them exist, to a
collector actor; the driver drains the collector and appends them to `--out`. A group is delivered
whole or not at all. A task that dies (or raises) is submitted again once, with the cases whose
group the driver has not received, so the group in flight when it died is measured again, whole.
A shard that fails twice leaves its undelivered cases as `failed` records. `--resume` works as for
a local sweep: the driver hands the shards only the cases without a record in `--out`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from . import presets
from .cli import UsageError
from .measure import Case, Options
from .records import RECORDS_FILE, STATUSES, CaseRecord, append

NODE_RESOURCE = (
    "cellbench_node"  # `ray start --resources='{"cellbench_node": 1}'`: one timing shard per node
)
POLL_S = 0.5
# Fault injection for the tests: a directory; each file in it makes one shard task exit hard right
# after delivering a group (it deletes the file first), so the group in flight dies with it.
DIE_ENV = "CELLBENCH_RAY_DIE"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'cellbench[cluster]'") from None
    return ray


def check_args(args: argparse.Namespace) -> None:
    """UsageError for option combinations the Ray executor cannot honour."""
    if getattr(args, "shard", None):
        raise UsageError(
            "--shard K/N and --executor ray exclude each other: the Ray executor splits "
            "the cases itself (--shard-count N)"
        )
    if args.shard_count is not None and args.shard_count < 1:
        raise UsageError(f"--shard-count must be an integer >= 1, got {args.shard_count}")


def task_resources(ray, device: str) -> tuple[dict, str]:
    """Ray resource request of one shard task and a sentence saying what it reserves."""
    if device != "cpu":
        return {"num_cpus": 1, "num_gpus": 1}, "one whole GPU per shard"
    total = ray.cluster_resources()
    if total.get(NODE_RESOURCE):
        return (
            {"num_cpus": 0, "resources": {NODE_RESOURCE: 1}},
            f"one whole node per shard (resource {NODE_RESOURCE!r})",
        )
    cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if cpus < 1:
        raise UsageError("the Ray cluster has no node with CPUs to run a shard on")
    return {"num_cpus": cpus}, f"{cpus:g} CPUs per shard (the largest node's): one shard per node"


def slots(ray, device: str) -> int:
    """How many shards the cluster can run at once."""
    total = ray.cluster_resources()
    if device != "cpu":
        return max(1, int(total.get("GPU", 0)))
    if total.get(NODE_RESOURCE):
        return max(1, int(total[NODE_RESOURCE]))
    return max(
        1, sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1)
    )


# --- on the nodes --------------------------------------------------------------------------------
class _Forwarder(threading.Thread):
    """Read the shard's local records file as the sweep appends to it; send run records at once and
    case records group by group, each group once all of its cases have a record."""

    def __init__(self, path: Path, cases: list[Case], send) -> None:
        super().__init__(daemon=True, name="cellbench-forwarder")
        from .planning import group_key

        self.path, self.send, self.group_key = path, send, group_key
        self.expected: dict[tuple, set] = {}
        for case in cases:
            self.expected.setdefault(group_key(case), set()).add(case.key())
        self.waiting: dict[tuple, list[dict]] = {}
        self.offset, self.stopping = 0, threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.wait(POLL_S):
                self.poll()
            self.poll()
        except BaseException as exc:  # surfaced by finish(): the shard must not end silently short
            self.error = exc

    def poll(self) -> None:
        import json

        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[
            : data.rfind(b"\n") + 1
        ]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("type") != "case":
                self.send([record])
                continue
            key = self.group_key(CaseRecord.from_dict(record))
            self.waiting.setdefault(key, []).append(record)
            got = {CaseRecord.from_dict(r).key() for r in self.waiting[key]}
            if got >= self.expected.get(key, set()):
                self.send(self.waiting.pop(key))

    def finish(self) -> None:
        """Stop after a last read; a group left incomplete (an interruption) is sent as it is."""
        self.stopping.set()
        self.join()
        if self.error is not None:
            raise self.error
        for records in self.waiting.values():
            self.send(records)
        self.waiting.clear()


def run_shard(
    label: str,
    cases: list[Case],
    options: Options,
    args: argparse.Namespace,
    preset: presets.Preset | None,
    collector,
) -> tuple[str, list]:
    """Body of one shard task: measure `cases`; returns the worker log and the refs of the sends.

    Nothing here waits on Ray: a task blocked in ray.get or ray.wait lends its CPUs to other tasks
    while it waits, which would put a second timing shard on this node."""
    import ray

    from .cli import import_modules
    from .runner import run_sweep

    import_modules(
        args.imports
    )  # backends registered by --import must be known in this process too
    local = Path(tempfile.mkdtemp(prefix="cellbench-shard-"))
    shard_args = argparse.Namespace(
        **{
            **vars(args),
            "out": str(local),
            "resume": False,
            "shard_label": label,
            "started": time.monotonic(),
        }
    )
    die = os.environ.get(DIE_ENV)
    sent: list = []

    def send(records: list[dict]) -> None:
        sent.append(collector.put.remote(records))  # actor calls of one caller run in order
        if die and any(r.get("type") == "case" for r in records):
            for token in sorted(Path(die).glob("*")):
                try:
                    token.unlink()
                except FileNotFoundError:  # another shard took it
                    continue
                ray.get(sent[-1])  # delivered, then die
                os._exit(1)

    forwarder = _Forwarder(local / RECORDS_FILE, cases, send)
    forwarder.start()
    try:
        run_sweep(cases, options, shard_args, preset)
    finally:
        forwarder.finish()
        log = local / "worker.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(local, ignore_errors=True)
    return text, sent


# --- on the driver -------------------------------------------------------------------------------
def _collector_class(ray):
    @ray.remote(num_cpus=0)
    class Collector:
        """Batches of records sent by the shards (one comparison group, or one run record each),
        waiting for the driver."""

        def __init__(self) -> None:
            self.batches: list[list[dict]] = []

        def put(self, records: list[dict]) -> None:
            self.batches.append(records)

        def take(self) -> list[list[dict]]:
            batches, self.batches = self.batches, []
            return batches

    return Collector


def run_on_ray(
    cases: list[Case],
    options: Options,
    args: argparse.Namespace,
    preset: presets.Preset | None,
) -> dict[str, int]:
    """Measure `cases` as Ray tasks, one per shard; records are appended to args.out as groups end.
    Returns the count of records per status, as bench.sweep.run_sweep does."""
    from .planning import comparison_groups, done_keys, repair_torn_tail, shard_of
    from .runner import tally

    check_args(args)
    ray = _import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(out)
    skip = done_keys(out, args.retry_failed) if args.resume else set()
    pending = [c for c in cases if c.key() not in skip]
    counts = {status: 0 for status in STATUSES}
    if not pending:
        print(
            f"bench run --executor ray: {len(cases)} cases, all already recorded, 0 to measure "
            f"-> {out / RECORDS_FILE}",
            file=sys.stderr,
        )
        return counts
    started = ray.is_initialized()
    if not started:
        ray.init()  # RAY_ADDRESS or the cluster of `ray start` on this machine, else a local one
    try:
        devices = {c.device for c in pending} or {"cpu"}
        device = "cpu" if devices == {"cpu"} else "cuda"
        count = args.shard_count or min(slots(ray, device), len(comparison_groups(pending)) or 1)
        split = {k: [c for c in pending if shard_of(c, count) == k] for k in range(1, count + 1)}
        shards = {f"{k}/{count}": s for k, s in split.items() if s}
        request, what = task_resources(ray, device)
        threads = max((c.threads for c in pending), default=0)
        if device == "cpu" and request.get("num_cpus", 0) and threads > request["num_cpus"]:
            print(
                f"warning: cases ask for {threads} threads but a shard gets {request['num_cpus']:g} CPUs "
                "(set --threads to the nodes' core count)",
                file=sys.stderr,
            )
        print(
            f"bench run --executor ray: {len(cases)} cases, {len(cases) - len(pending)} already recorded, "
            f"{len(pending)} to measure in {len(shards)} shards of {count}, {what} -> {out / RECORDS_FILE}",
            file=sys.stderr,
        )
        _drive(
            ray,
            shards,
            options,
            args,
            preset,
            request,
            out,
            counts,
            NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        )
    finally:
        if not started:
            ray.shutdown()
    print(
        f"bench run --executor ray: {tally(counts)}; records in {out / RECORDS_FILE}",
        file=sys.stderr,
    )
    return counts


def _drive(
    ray,
    shards: dict[str, list[Case]],
    options: Options,
    args: argparse.Namespace,
    preset: presets.Preset | None,
    request: dict,
    out: Path,
    counts: dict,
    here,
) -> None:
    """Submit the shards, append what they send, submit a shard again once when its task fails
    (with the cases not yet received), and record the cases of a shard that failed twice."""
    collector = _collector_class(ray).options(scheduling_strategy=here).remote()
    task = ray.remote(run_shard).options(max_retries=0, **request)
    plain = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
    received: set[tuple] = set()

    def submit(label: str, cases: list[Case]):
        return task.remote(label, cases, options, plain, preset, collector)

    def drain() -> None:
        for batch in ray.get(collector.take.remote()):
            keys = {CaseRecord.from_dict(r).key() for r in batch if r.get("type") == "case"}
            if keys & received:  # a late send of a task that died, after its retry sent the group
                continue
            received.update(keys)
            for record in batch:
                append(out, record)
                if record.get("type") == "case":
                    counts[record["status"]] += 1

    def left(label: str) -> list[Case]:
        return [c for c in shards[label] if c.key() not in received]

    refs = {submit(label, cases): label for label, cases in shards.items()}
    tries = {label: 1 for label in shards}
    errors: dict[str, str] = {}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=POLL_S)
            drain()
            for ref in done:
                label = refs.pop(ref)
                try:
                    log, sent = ray.get(ref)
                    ray.get(sent)  # everything the shard sent has reached the collector
                except Exception as exc:  # the task died or raised
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    drain()
                    if not left(label):  # it failed after sending every group
                        continue
                    if tries[label] == 1:
                        print(f"shard {label} failed ({error}); running it again", file=sys.stderr)
                        tries[label] += 1
                        refs[submit(label, left(label))] = label
                    else:
                        errors[label] = error
                        print(f"shard {label} failed twice: {error}", file=sys.stderr)
                    continue
                if log:
                    with open(out / "worker.log", "a", encoding="utf-8") as f:
                        f.write(f"--- shard {label}\n{log}")
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        drain()
        print(
            "interrupted: the records received so far are kept; run again with --resume",
            file=sys.stderr,
        )
        raise
    drain()
    for label, error in errors.items():
        for case in left(label):
            append(
                out,
                CaseRecord(
                    **asdict(case),
                    status="failed",
                    shard=label,
                    error=f"the Ray task of shard {label} failed twice: {error}",
                ),
            )
            counts["failed"] += 1
