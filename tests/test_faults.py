"""Fault injection: a sweep killed while a case hangs leaves no process behind; a worker that
dies mid-call is reported by its signal and log, and restarted; exceptions, memory errors and
the parent watchdog (the fallback where Linux's parent-death signal does not exist).

Leftover processes are found by a marker variable in their environment (/proc/PID/environ), not
by parentage: orphans are re-parented to init and lose their link to the sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for path in (str(TESTS), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench import worker as W  # noqa: E402
from bench.measure import Case, Options  # noqa: E402

MARKER = "CELLBENCH_TEST_MARKER"
TINY = ["--input-size", "4", "--hidden-size", "8", "--batch", "2", "--seq-len", "3"]
FAST = (
    "--threads 1 --modes infer --no-peak --no-memory --min-run-time 0.001 --min-repeats 2 "
    "--warmup 0 --min-rounds 2 --max-rounds 2"
).split()
OPTIONS = Options(min_run_time=0.001, min_repeats=2, warmup=0, memory=False)  # see faulty.py


def case(backend: str) -> Case:
    return Case("lstm", backend, "infer", 4, 8, 1, 2, 3, threads=1)


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live (not zombie) process whose environment carries `marker`."""
    needle = f"{MARKER}={marker}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, IndexError):
            continue  # ended while we looked, or not ours to read
    return found


def wait_until_gone(marker: str, timeout: float = 30.0) -> dict[int, str]:
    """The marked processes still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = marked_processes(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture
def marker():
    """A fresh marker; afterwards, SIGKILL whatever still carries it (so a failure leaves nothing).
    multiprocessing's resource tracker for this test process, which lives as long as the test
    process, is started first so that it does not carry the marker."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    value = uuid.uuid4().hex
    yield value
    for pid in marked_processes(value):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# --- killing the sweep while a case hangs ------------------------------------------------------
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name
)
def test_killing_the_sweep_while_a_case_hangs_leaves_no_process(tmp_path, marker, sig):
    """SIGKILL of the sweep runs no handler of ours: only the worker's parent-death signal (and
    its reaper, for the worker's own child) can end them; this test is their proof."""
    flag = tmp_path / "hanging"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]),
        **{
            MARKER: marker,
            "CELLBENCH_FAULTY_HANG_FILE": str(flag),
            "CELLBENCH_FAULTY_HANG_CHILD": "1",
        },
    )
    env.pop("CELLBENCH_FAULTY_HANG_AT", None)  # the default: in timing round 2
    argv = [
        sys.executable,
        *"-m bench run --import candidates.faulty --kinds lstm --backends native,hangs".split(),
        *TINY,
        *FAST,
        *"--time-limit 600 --out".split(),
        str(tmp_path / "run"),
    ]
    # a shell's background job (CI may start this suite as one) inherits SIGINT ignored, and
    # Python then keeps ignoring it: restore the default so the sweep sees Ctrl-C as a user's would
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert proc.poll() is None, (
                f"the sweep ended before the hang:\n{proc.stdout.read().decode()}"
            )
            assert time.monotonic() < deadline, "the hangs backend never started hanging"
            time.sleep(0.2)
        hanging_worker = int(flag.read_text())
        before = marked_processes(marker)
        # the sweep, multiprocessing's resource tracker, the worker, its reaper and its child
        assert hanging_worker in before and len(before) >= 5, before
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the sweep handles SIGTERM like Ctrl-C: exit status 130 once the records are written
    assert proc.returncode == {signal.SIGTERM: 130, signal.SIGINT: 130, signal.SIGKILL: -9}[sig]
    left = wait_until_gone(marker)
    assert not left, f"left behind after {sig.name}: {left}"


# --- a worker that dies, raises or runs out of memory -----------------------------------------
def test_segfault_mid_call_is_reported_with_its_signal_and_the_worker_restarts(
    tmp_path, marker, monkeypatch
):
    monkeypatch.setenv(MARKER, marker)
    monkeypatch.delenv("CELLBENCH_FAULTY_SEGFAULT_AT", raising=False)  # the default: round 2
    worker = W.Worker(
        threads=1, imports=["candidates.faulty"], log_path=str(tmp_path / "worker.log")
    )
    before = signal.getsignal(signal.SIGTERM)
    try:
        first = worker.call(("case", case("segfault"), OPTIONS, None, True), 120)
        assert first[0] == "ok", first
        assert (
            signal.getsignal(signal.SIGTERM) is not before
        )  # the sweep's exit handler, while alive
        crashed = worker.call(("retime", case("segfault"), OPTIONS), 120)
        assert crashed[0] == "failed" and "worker process died (SIGSEGV)" in crashed[1], crashed
        # the log's tail: faulthandler's report and the backend's frame
        assert (
            "Fatal Python error: Segmentation fault" in crashed[1] and "faulty.py" in crashed[1]
        ), crashed
        assert not worker.alive() and worker.starts == 1
        assert signal.getsignal(signal.SIGTERM) is before  # no live worker: the handler is restored
        again = worker.call(("case", case("native"), OPTIONS, None), 120)
        assert again[0] == "ok" and again[1]["status"] == "ok" and min(again[1]["times"]) > 0, again
        assert worker.starts == 2
    finally:
        worker.stop()
    assert not worker.alive()
    left = wait_until_gone(marker)
    assert not left, f"left behind by the worker: {left}"


MEMORY_CAP = """
import resource
# an address-space cap a little above what the worker maps already, so that the 'hog' backend's
# allocation fails at once on any machine (overcommit or not) instead of filling the memory
with open("/proc/self/status") as f:
    mapped = int(next(line for line in f if line.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
"""


def test_exceptions_and_memory_errors_are_failed_replies_and_the_worker_survives(
    tmp_path, monkeypatch
):
    (tmp_path / "memory_cap_for_worker.py").write_text(textwrap.dedent(MEMORY_CAP))
    monkeypatch.syspath_prepend(str(tmp_path))
    worker = W.Worker(
        threads=1,
        imports=["candidates.faulty", "memory_cap_for_worker"],
        log_path=str(tmp_path / "worker.log"),
    )
    try:
        raised = worker.call(("case", case("raises"), OPTIONS, None), 120)
        assert raised[:2] == (
            "failed",
            "RuntimeError: faulty backend 'raises': forward failed on purpose",
        )
        assert "run_layer" in raised[2]  # the traceback comes along as the detail
        hog = worker.call(("case", case("hog"), OPTIONS, None), 120)
        assert hog[0] == "failed" and "memory" in hog[1].lower() and "RuntimeError" in hog[1], hog
        ok = worker.call(("case", case("native"), OPTIONS, None), 120)
        assert ok[0] == "ok", ok
        assert worker.starts == 1  # neither took the worker down
    finally:
        worker.stop()


def test_a_timeout_kills_the_workers_children_too(tmp_path, marker, monkeypatch):
    monkeypatch.setenv(MARKER, marker)
    monkeypatch.setenv("CELLBENCH_FAULTY_HANG_AT", "1")
    monkeypatch.setenv("CELLBENCH_FAULTY_HANG_CHILD", "1")
    monkeypatch.setenv("CELLBENCH_FAULTY_HANG_FILE", str(tmp_path / "hanging"))
    worker = W.Worker(
        threads=1, imports=["candidates.faulty"], log_path=str(tmp_path / "worker.log")
    )
    try:
        assert worker.call(("case", case("native"), OPTIONS, None), 120)[0] == "ok"  # imports done
        # build and gate take well under a second here (imports are done), then the hang
        hang = worker.call(("case", case("hangs"), OPTIONS, None), 10.0)
        assert hang[0] == "failed" and hang[1].startswith("exceeded the time limit of 10 s"), hang
        assert (tmp_path / "hanging").exists() and not worker.alive()
    finally:
        worker.stop()
    left = wait_until_gone(marker)
    assert not left, f"the hanging case's child survived the timeout: {left}"


# --- the fallback: a watchdog thread on the parent's pid ---------------------------------------
WATCHED = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", '''
import os, sys
sys.path.insert(0, os.environ["CELLBENCH_ROOT"])
from bench.worker import watch_parent
os.setsid()
parent = os.getppid()
print(os.getpid(), flush=True)
watch_parent(parent, interval=0.05)  # never returns: it kills its own group
'''])
time.sleep(600)
"""


def test_watchdog_kills_its_group_when_the_parent_dies(marker):
    env = dict(os.environ, CELLBENCH_ROOT=str(ROOT), **{MARKER: marker})
    parent = subprocess.Popen(
        [sys.executable, "-c", WATCHED], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())  # the child's line: it is watching
        assert child in marked_processes(marker)
        parent.kill()
        parent.wait(timeout=30)
        assert not wait_until_gone(marker, timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
