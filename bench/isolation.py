"""No orphans (docs/bench.md, "Process isolation"): how a worker process and the helpers it
starts end with the sweep, and the sweep's workers with it, whichever way either ends.

The worker's side: it leads its own process group; it dies with its parent (Linux's parent-death
signal, else a watchdog thread); and a "reaper" it forks at start-up SIGKILLs its group once it
is gone. The sweep's side: while a worker lives, SIGTERM/SIGINT/SIGHUP handlers and an atexit
hook SIGKILL the group of every live worker.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import select
import signal
import sys
import threading
import time
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_INTERVAL_S = 0.5  # how often the watchdog thread and the reaper look for a dead parent


def kill_group(pid: int) -> None:
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
    kill_group(os.getpid())


def die_with_parent(parent_pid: int) -> None:
    """Make this process (and, as group leader, its group) end when `parent_pid` ends."""
    if sys.platform.startswith("linux"):
        # sent when the *thread* that started us exits: workers are started from the main thread
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect: nobody will signal
        kill_group(os.getpid())
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


# --- the sweep's side: every live worker's group is killed on every way out -------------------
_live: set[int] = set()  # pids of the live workers, for the exit handlers
_previous_handlers: dict[int, Any] = {}  # signal -> the handler ours replaced
EXIT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


def stop_all_workers() -> None:
    """SIGKILL every live worker and its helpers now (the atexit and signal paths)."""
    for pid in list(_live):
        kill_group(pid)


def _on_exit_signal(signum: int, frame: Any) -> None:
    stop_all_workers()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):  # e.g. Python's SIGINT handler: KeyboardInterrupt, as before
        previous(signum, frame)
        return
    # instead of the default sudden death: `finally` blocks run and write what was measured
    raise SystemExit(128 + signum)


def install_exit_handlers() -> None:
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


def track(pid: int) -> None:
    """A worker was started: its group dies with this process from now on."""
    install_exit_handlers()
    _live.add(pid)


def untrack(pid: int) -> None:
    """A worker ended: once none lives, the exit signals get their own handlers back."""
    _live.discard(pid)
    if not _live:
        _restore_exit_handlers()


atexit.register(stop_all_workers)
