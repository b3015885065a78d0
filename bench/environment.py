"""What a run record says about the machine: versions, CPU, GPU, threads, git commit, time."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def cpu_model() -> str | None:
    from cells.host import cpuinfo  # here, not at import: importing cells imports torch

    return cpuinfo("model name") or platform.processor() or None


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def git_commit(path: Path | None = None) -> str | None:
    """HEAD's hash, with '-dirty' if the tree has changes (read-only git commands)."""
    cwd = path or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
        return getattr(module, "__version__", "unknown")
    except Exception:
        return None


def collect() -> dict:
    """The environment of this process (call it where the cases run, after threads are set)."""
    import torch

    env = {
        "time": now(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "triton": _version("triton"),
        "cpu_model": cpu_model(),
        "cpu_cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.version.cuda,
        "gpu_name": None,
        "gpu_count": 0,
        "cudnn": None,
        "git_commit": git_commit(),
        # BLAS kernel overrides change the speed of every BLAS call (numba's and numpy's GEMMs):
        # OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU, say, makes numba's kernels several times slower
        "blas_env": {
            k: os.environ[k]
            for k in (
                "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE",
                "MKL_DEBUG_CPU_TYPE",
                "MKL_ENABLE_INSTRUCTIONS",
            )
            if k in os.environ
        }
        or None,
    }
    try:
        import numba

        env["numba_threads"] = numba.get_num_threads()
    except Exception:
        env["numba_threads"] = None
    try:
        import numpy as np

        info: Any = (np.show_config(mode="dicts") if hasattr(np, "show_config") else None) or {}
        blas = info.get("Build Dependencies", {}).get("blas", {})
        env["numpy_blas"] = (
            " ".join(str(blas.get(k, "")) for k in ("name", "version")).strip() or None
        )
    except Exception:
        env["numpy_blas"] = None
    if torch.cuda.is_available():
        env["gpu_count"] = torch.cuda.device_count()
        env["gpu_name"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
    return env
