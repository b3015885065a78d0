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

No orphans (docs/bench.md, "Process isolation"): the worker leads its own process group, so one
killpg also ends the helpers it starts (torch.compile's compile workers). It dies with the sweep
(Linux's parent-death signal, else a watchdog thread); a "reaper" it forks at start-up kills its
group once it is gone; and the sweep's SIGTERM/SIGINT/SIGHUP handlers and atexit hook kill the
group of every live worker.

This module imports nothing heavy at the top: the child sets its environment first.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_INTERVAL_S = 0.5  # how often the watchdog thread and the reaper look for a dead parent


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
    try:
        if what == "case":
            _, case, options, peak, *rest = message
            keep = state.setdefault("kept", {}) if rest and rest[0] else None
            return ("ok", measure.run_case(case, options, peak, keep=keep))
        if what == "retime":
            _, case, options = message
            return ("ok", measure.retime(case, options, state.setdefault("kept", {})))
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

    got = measure.set_threads(threads)
    for name in imports:
        importlib.import_module(name)
    return got


def _kill_group(pid: int) -> None:
    """SIGKILL the group led by `pid` (a worker after setsid), or `pid` alone if it leads none.
    No waiting: safe inside a signal handler."""
    try:
        os.killpg(pid, signal.SIGKILL)  # only ever a group whose id is the worker's own pid
        return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def watch_parent(parent_pid: int, interval: float = WATCH_INTERVAL_S) -> None:
    """Block until this process is re-parented (its parent `parent_pid` died), then SIGKILL this
    process's group. Run in a daemon thread: the fallback where there is no parent-death signal."""
    while os.getppid() == parent_pid:
        time.sleep(interval)
    _kill_group(os.getpid())


def die_with_parent(parent_pid: int) -> None:
    """Make this process (and, as group leader, its group) end when `parent_pid` ends."""
    if sys.platform.startswith("linux"):
        # sent when the *thread* that started us exits: workers are started from the main thread
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect: nobody will signal
        _kill_group(os.getpid())
    threading.Thread(
        target=watch_parent, args=(parent_pid,), daemon=True, name="cellbench-parent-watchdog"
    ).start()


def start_reaper() -> None:
    """Fork a process that SIGKILLs this group leader's group once this process is gone, so that
    its children (compile workers), which no parent-death signal covers, end with it however it
    ends. The reaper waits for EOF on a pipe only this process writes to, and checks its parent
    pid too (a forked grandchild may hold the write end). Call before any thread exists."""
    if not hasattr(os, "fork"):
        return
    read_fd, write_fd = os.pipe()  # non-inheritable: exec'd children never hold the write end
    worker_pid = os.getpid()
    if os.fork() == 0:  # the reaper: plain os calls only, nothing of the worker's state
        try:
            os.close(write_fd)
            # hold nothing of the worker's: its pipe to the sweep must reach EOF when it dies
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.closerange(3, read_fd)
            os.closerange(read_fd + 1, max(read_fd + 2, os.sysconf("SC_OPEN_MAX")))
            while os.getppid() == worker_pid:
                ready, _, _ = select.select([read_fd], [], [], WATCH_INTERVAL_S)
                if ready and not os.read(read_fd, 1):
                    break
            os.killpg(worker_pid, signal.SIGKILL)  # the worker's own group (it called setsid)
        finally:
            os._exit(0)
    os.close(read_fd)  # the worker keeps write_fd open until it exits


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


# --- the sweep's side: every live worker's group is killed on every way out ---------------------
_live: dict[int, Worker] = {}  # pid -> worker, for the exit handlers
_previous_handlers: dict[int, Any] = {}  # signal -> the handler ours replaced
EXIT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


def stop_all_workers() -> None:
    """SIGKILL every live worker and its helpers now (the atexit and signal paths)."""
    for pid in list(_live):
        _kill_group(pid)


def _on_exit_signal(signum: int, frame) -> None:
    stop_all_workers()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):  # e.g. Python's SIGINT handler: KeyboardInterrupt, as before
        previous(signum, frame)
        return
    # instead of the default sudden death: `finally` blocks run and write what was measured
    raise SystemExit(128 + signum)


def _install_exit_handlers() -> None:
    """Route SIGTERM/SIGINT/SIGHUP through stop_all_workers (main thread only: Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        return  # the atexit hook and the workers' parent-death signal still hold
    for name in EXIT_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None or signum in _previous_handlers:
            continue
        current = signal.getsignal(signum)
        if current in (signal.SIG_IGN, None) or current is _on_exit_signal:
            continue  # ignored on purpose (nohup), or set outside Python: leave it
        _previous_handlers[signum] = current
        signal.signal(signum, _on_exit_signal)


def _restore_exit_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous_handlers.items()):
        if signal.getsignal(signum) is _on_exit_signal:
            signal.signal(signum, previous)
        del _previous_handlers[signum]


atexit.register(stop_all_workers)


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
        self.process = None
        self.conn = None
        self.info: dict = {}
        self.starts = 0
        self._log_mark = 0  # log size when the current request was sent: quote only what follows

    def _start(self) -> str | None:
        from .measure import thread_env

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._log_mark = _log_size(self.log_path)
        self.process = ctx.Process(
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
        _install_exit_handlers()
        self.process.start()
        _live[self.process.pid] = self
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
        if code is not None:
            _live.pop(self.process.pid, None)
            if not _live:
                _restore_exit_handlers()
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
        if self.process is not None and self.process.is_alive():
            _kill_group(self.process.pid)
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
        try:
            self.conn.send(message)
        except (OSError, BrokenPipeError) as exc:
            self.kill()
            return ("failed", f"could not reach the worker: {exc}")
        if not self.conn.poll(timeout):
            self.kill()
            return (
                "failed",
                f"exceeded the time limit of {timeout:g} s (worker killed and restarted) "
                f"{self._tail()}".strip(),
            )
        try:
            return self.conn.recv()
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
