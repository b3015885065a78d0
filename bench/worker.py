"""Run cases in a reusable worker subprocess, restarted after a timeout or a crash.

Why a subprocess: a case can hang (a compiler that never returns), exhaust memory (the kernel's
OOM killer ends the process) or crash the interpreter (a segfault in a native kernel). None of
these can be contained in the sweep's own process; in a child they cost one failed record and a
restart (a couple of seconds to import torch again), and the sweep goes on. The child is reused
between cases so that the import cost is paid once, not per case. It is started with the
`spawn` method (no fork of a process holding OpenMP / CUDA state), with the BLAS thread
variables set for the run's thread count before torch and numpy load, and it imports the
`--import` modules so that third-party backends are registered there too.

The worker's stdout and stderr go to a log file (compiler chatter, profiler warnings, and
faulthandler's Python stack on a fatal signal), whose new lines are quoted when the worker dies.

No orphans: the worker leads its own process group, so one killpg also ends the helpers it
starts (torch.compile's compile workers); bench.isolation makes that group end with the sweep
and the sweep's workers end with it (docs/bench.md, "Process isolation").

This module imports nothing heavy at the top: the child sets its environment first.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from .isolation import (
    die_with_parent,
    install_exit_handlers,
    kill_group,
    start_reaper,
    track,
    untrack,
    watch_parent,
)

__all__ = ["InProcess", "Worker", "describe_exit", "handle", "log_tail", "prepare", "watch_parent"]


def _redirect_output(log_path: str | None) -> None:
    if not log_path:
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def handle(message: tuple, state: dict) -> tuple:
    """Serve one request in this process: ('case', Case, Options, peak[, keep]) | ('retime',
    Case, Options) | ('forget',) | ('peak', device) | ('env',). A case measured with keep=True
    stays built in `state` for 'retime' rounds until 'forget'."""
    from . import environment, measure

    what = message[0]
    retimed = False  # a retime round that succeeded leaves nothing to collect
    try:
        if what == "case":
            _, case, options, peak, *rest = message
            keep = state.setdefault("kept", {}) if rest and rest[0] else None
            return ("ok", measure.run_case(case, options, peak, keep=keep))
        if what == "retime":
            _, case, options = message
            timed = measure.retime(case, options, state.setdefault("kept", {}))
            retimed = True
            return ("ok", timed)
        if what == "forget":
            state.pop("kept", None)
            return ("ok", None)
        if what == "peak":
            return ("ok", measure.measure_peak(message[1]))
        if what == "env":
            return ("ok", environment.collect())
        return ("failed", f"unknown request {what!r}")
    except BaseException as exc:  # noqa: BLE001 - anything a backend raises is a result
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = traceback.format_exc(limit=-6)
        return ("failed", measure.error_message(exc), detail)
    finally:
        # a full collection after whatever built or dropped modules, or failed; not after each
        # retime round of kept modules, where it costs more than the round in a big process
        if not retimed:
            _cleanup()


def _cleanup() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def prepare(threads: int, imports: list[str]) -> dict:
    """Set threads and import plug-in modules in this process; returns the threads in effect."""
    from . import measure
    from .cli import import_modules

    got = measure.set_threads(threads)
    import_modules(imports)
    return got


def _serve(
    conn,
    threads: int,
    imports: list[str],
    env: dict,
    log_path: str | None,
    parent_pid: int | None = None,
) -> None:
    os.environ.update(env)
    try:
        os.setsid()  # own process group: killing it also ends helpers it spawned (compile workers)
    except OSError:
        pass
    if parent_pid is not None:
        if os.getpgrp() == os.getpid():  # only a group of our own may be reaped
            start_reaper()  # before the watchdog thread exists: fork with threads is unsafe
        die_with_parent(parent_pid)
    _redirect_output(log_path)
    import faulthandler

    faulthandler.enable(all_threads=False)  # a fatal signal leaves the Python stack in the log
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # --import names modules relative to where we run
        got = prepare(threads, imports)
    except BaseException as exc:  # noqa: BLE001
        conn.send(("failed", f"worker start-up failed: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", got))
    state: dict = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        conn.send(handle(message, state))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = "; killed: out of memory?" if -code == signal.SIGKILL else ""
        return f"{name}{hint}"
    return f"exit code {code}"


def _log_size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def log_tail(path: str | None, since: int = 0, lines: int = 3) -> str:
    """What the worker wrote to its log after byte `since`, as one line: faulthandler's fatal
    error and innermost frame when there is one, else the last `lines` non-empty lines."""
    if not path or not os.path.exists(path):
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(since, f.tell() - 8000))
            text = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    text = [t.strip() for t in text if t.strip() and not t.startswith("Extension modules:")]
    fatal = [i for i, t in enumerate(text) if t.startswith("Fatal Python error:")]
    if fatal:
        frames = [t for t in text[fatal[-1] :] if t.startswith("File ")]
        return " | ".join([text[fatal[-1]]] + frames[:1])
    return " | ".join(text[-lines:])


class Worker:
    """One child process serving requests; restarted on demand after it dies or is killed.

    While a worker lives, the exit signals of this process kill it first (see the module's
    docstring); start workers from the main thread (the parent-death signal is tied to the
    thread that starts the child)."""

    def __init__(
        self,
        threads: int,
        imports: list[str],
        log_path: str | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.threads, self.imports, self.log_path = threads, list(imports), log_path
        self.startup_timeout = startup_timeout
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.info: dict = {}
        self.starts = 0
        self._log_mark = 0  # log size when the current request was sent: quote only what follows

    def _start(self) -> str | None:
        from .measure import thread_env

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._log_mark = _log_size(self.log_path)
        process = ctx.Process(
            target=_serve,
            daemon=True,
            name="cellbench-worker",
            args=(
                child,
                self.threads,
                self.imports,
                thread_env(self.threads),
                self.log_path,
                os.getpid(),
            ),
        )
        install_exit_handlers()  # before the child exists: a signal from now on kills it too
        process.start()
        self.process = process
        if process.pid is not None:
            track(process.pid)
        child.close()
        self.conn = parent
        self.starts += 1
        if not parent.poll(self.startup_timeout):
            self.kill()
            return f"worker did not start within {self.startup_timeout:g} s"
        try:
            reply = parent.recv()
        except EOFError:
            code = self._reap()
            return f"worker died at start-up ({describe_exit(code)}) {self._tail()}".strip()
        if reply[0] != "ready":
            self.stop()
            return reply[1]
        self.info = reply[1]
        return None

    def _tail(self) -> str:
        return log_tail(self.log_path, self._log_mark)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def _reap(self) -> int | None:
        if self.process is None:
            return None
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and self.process.pid is not None:
            untrack(self.process.pid)
        self.process = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return code

    def stop(self) -> None:
        """Ask the child to stop; kill it if it does not."""
        if self.process is None:
            return
        try:
            if self.process.is_alive() and self.conn is not None:
                self.conn.send(("stop",))
                self.process.join(timeout=5)
        except (OSError, BrokenPipeError):
            pass
        if self.process is not None and self.process.is_alive():
            self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the worker and everything in its process group."""
        if self.process is not None and self.process.is_alive() and self.process.pid:
            kill_group(self.process.pid)
        self._reap()

    def call(self, message: tuple, timeout: float | None) -> tuple:
        """('ok', result) or ('failed', message[, detail]); never raises for the case's sake.
        A worker that dies is named with its signal (SIGSEGV, SIGKILL...) and the lines it logged
        during this request."""
        if not self.alive():
            problem = self._start()
            if problem:
                return ("failed", problem)
        self._log_mark = _log_size(self.log_path)
        conn = self.conn
        if conn is None:  # not after a successful start; for the type checker
            return ("failed", "the worker has no connection")
        try:
            conn.send(message)
        except (OSError, BrokenPipeError) as exc:
            self.kill()
            return ("failed", f"could not reach the worker: {exc}")
        if not conn.poll(timeout):
            self.kill()
            return (
                "failed",
                f"exceeded the time limit of {timeout:g} s (worker killed and restarted) "
                f"{self._tail()}".strip(),
            )
        try:
            return conn.recv()
        except (EOFError, OSError):
            code = self._reap()
            return ("failed", f"worker process died ({describe_exit(code)}) {self._tail()}".strip())


class InProcess:
    """The same interface, in this process: no isolation and no time limit (for debugging)."""

    def __init__(self, threads: int, imports: list[str]) -> None:
        self.info = prepare(threads, imports)
        self.threads = threads
        self.state: dict[str, Any] = {}

    def call(self, message: tuple, timeout: float | None) -> tuple:
        return handle(message, self.state)

    def stop(self) -> None:
        pass
