"""Entry points: `nox -s bench` (the main job), `nox -s tests`, `nox -s textbook`, `nox -s regress`.

Environments see the system site-packages, so a GPU user's own torch (and numba, triton) is
used as it is. Where no torch is importable, the CPU build torch==2.13.0 is installed; on a
machine without a local wheel and without an NVIDIA driver it comes from PyTorch's CPU index,
never as the multi-GB CUDA build that a plain `pip install torch` resolves to.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
HERE = Path(__file__).parent
TORCH = os.environ.get("CELLBENCH_TORCH", "torch==2.13.0")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VENV = {"venv_params": ["--system-site-packages"]}


def _python(session: nox.Session) -> str:
    return str(Path(session.bin) / "python") if session.bin else sys.executable


def _local_torch_wheel() -> bool:
    """True if pip's find-links hold a torch wheel (this project's CPU machines do)."""
    links = os.environ.get("PIP_FIND_LINKS") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True, text=True).stdout
    return any(Path(p).is_dir() and any(Path(p).glob("torch-*.whl")) for p in links.split())


def install(session: nox.Session, *extras: str) -> None:
    if subprocess.run([_python(session), "-c", "import torch"], capture_output=True).returncode != 0:
        args = [TORCH]
        if sys.platform.startswith("linux") and not shutil.which("nvidia-smi") and not _local_torch_wheel():
            args += ["--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple"]
        session.install(*args)
    spec = "." + (f"[{','.join(extras)}]" if extras else "")
    session.install("-e", spec)


def _data_env() -> dict[str, str]:
    shared = HERE.parent / "shared" / "data"
    if "CELLBENCH_DATA" not in os.environ and shared.is_dir():
        return {"CELLBENCH_DATA": str(shared)}
    return {}


@nox.session(**VENV)
def tests(session: nox.Session) -> None:
    """The test suite (CPU; CUDA tests run too where a GPU is present)."""
    install(session, "test")
    session.run("python", "-m", "pytest", *session.posargs, env=_data_env())


@nox.session(**VENV)
def bench(session: nox.Session) -> None:
    """The quick sweep and short textbook tasks; writes reports/latest.md with its plots."""
    install(session)
    out = os.environ.get("CELLBENCH_OUT", str(HERE / "runs" / "latest"))
    args = session.posargs or ["--preset", "quick"]
    session.run("python", "-m", "bench", "run", *args, "--out", out, "--resume", env=_data_env())
    session.run("python", "-m", "bench", "tasks", "--short", "--out", out, "--resume", env=_data_env())
    session.run("python", "-m", "bench", "report", out, "--output", str(HERE / "reports" / "latest.md"))


@nox.session(**VENV)
def textbook(session: nox.Session) -> None:
    """The four textbook labs at their full settings (long: hours on 2 CPU cores)."""
    install(session)
    out = os.environ.get("CELLBENCH_OUT", str(HERE / "runs" / "textbook"))
    session.run("python", "-m", "bench", "tasks", "--full", "--out", out, "--resume", *session.posargs,
                env=_data_env())
    session.run("python", "-m", "bench", "report", out, "--output", str(HERE / "reports" / "textbook.md"))


@nox.session(**VENV)
def regress(session: nox.Session) -> None:
    """pytest-benchmark speed suite at fixed shapes, autosaved; add --benchmark-compare-fail on stable machines."""
    install(session, "test")
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-enable", "--benchmark-autosave",
                "-p", "no:cacheprovider", *session.posargs)


@nox.session(**VENV)
def peers(session: nox.Session) -> None:
    """The peer backends (ONNX Runtime, OpenVINO, JAX) against torch.nn: the optional extra."""
    install(session, "test", "peers")
    session.run("python", "-m", "pytest", "tests/test_peers.py", *session.posargs, env=_data_env())
