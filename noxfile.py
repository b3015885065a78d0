"""Entry points: `nox -s bench` (the main job), `nox -s tests`, `nox -s textbook`, `nox -s regress`,
`nox -s lint` (ruff and mypy) and `nox -s isolated` (CI's check of a clean install).

Environments see the system site-packages, so a GPU user's own torch (and numba, triton) is
used as it is. Where no torch is importable, the CPU build torch==2.13.0 is installed; on a
machine without a local wheel and without an NVIDIA driver it comes from PyTorch's CPU index,
never as the multi-GB CUDA build that a plain `pip install torch` resolves to. (On a machine
with an NVIDIA driver and no torch, PyPI's default CUDA build is installed: what a GPU user wants.)
The `isolated` session sees no system site-packages, so a dependency the package forgot to
declare shows up there.
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
    links = (
        os.environ.get("PIP_FIND_LINKS")
        or subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
        ).stdout
    )
    return any(Path(p).is_dir() and any(Path(p).glob("torch-*.whl")) for p in links.split())


def install(session: nox.Session, *extras: str) -> None:
    if (
        subprocess.run([_python(session), "-c", "import torch"], capture_output=True).returncode
        != 0
    ):
        args = [TORCH]
        if (
            sys.platform.startswith("linux")
            and not shutil.which("nvidia-smi")
            and not _local_torch_wheel()
        ):
            args += ["--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple"]
        session.install(
            "--no-compile", *args
        )  # no .pyc for all of torch: a third of the install time
    spec = "." + (f"[{','.join(extras)}]" if extras else "")
    session.install("--no-compile", "-e", spec)


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
    """The quick sweep and short textbook tasks; writes reports/latest.md with its plots.

    The report is written whatever happened before it: a failed, incorrect or unmeasured case or
    task is listed there with its reason, and the session fails only after the report exists."""
    install(session)
    out = os.environ.get("CELLBENCH_OUT", str(HERE / "runs" / "latest"))
    args = session.posargs or ["--preset", "quick"]
    problems = []
    for what, command in (("sweep", ["run", *args]), ("textbook tasks", ["tasks", "--short"])):
        argv = [_python(session), "-m", "bench", *command, "--out", out, "--resume"]
        session.log(" ".join(argv[1:]))
        # run directly (not session.run) to learn the exit status and go on to the report
        code = subprocess.run(argv, env={**os.environ, **_data_env()}).returncode
        if code:
            problems.append(f"the {what} exited {code}")
    session.run(
        "python", "-m", "bench", "report", out, "--output", str(HERE / "reports" / "latest.md")
    )
    if problems:
        session.error("; ".join(problems) + " (see reports/latest.md for what failed and why)")


# Backends that cannot be available after a plain `pip install -e .` on a CPU machine: they need a
# GPU, or an optional extra (`cellbench[peers]`) that the plain install leaves out.
GPU_OR_EXTRA = ("triton", "ort", "openvino", "jax")


@nox.session(**VENV)
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy over the public API, as configured in pyproject.toml."""
    install(session, "lint")
    # as modules of the session's python: found in the venv, or in the system's site-packages
    session.run("python", "-m", "ruff", "check", ".")
    session.run("python", "-m", "ruff", "format", "--check", ".")
    session.run("python", "-m", "mypy")


@nox.session(venv_params=[])
def isolated(session: nox.Session) -> None:
    """A clean virtual environment WITHOUT system site-packages: `pip install -e .` must give every
    CPU backend and every command (nox's other sessions see the system's packages, which can
    hide an undeclared dependency)."""
    install(session)
    session.run(
        "python",
        "-c",
        (
            "import cells, sys\n"
            f"missing = {{n: r for n, r in cells.unavailable().items() if n not in {GPU_OR_EXTRA!r}}}\n"
            "print('unavailable here:', cells.unavailable())\n"
            "sys.exit(f'CPU backends unavailable after a clean install: {missing}' if missing else 0)"
        ),
    )
    for command in ("run", "report", "train", "tasks", "validate", "compare"):
        session.run("python", "-m", "bench", command, "--help", silent=True)


@nox.session(**VENV)
def textbook(session: nox.Session) -> None:
    """Every textbook lab at its own protocol and at cellbench's (within an hour on 2 CPU cores)."""
    install(session)
    out = os.environ.get("CELLBENCH_OUT", str(HERE / "runs" / "textbook"))
    session.run(
        "python",
        "-m",
        "bench",
        "tasks",
        "--full",
        "--out",
        out,
        "--resume",
        *session.posargs,
        env=_data_env(),
    )
    session.run(
        "python", "-m", "bench", "report", out, "--output", str(HERE / "reports" / "textbook.md")
    )


@nox.session(**VENV)
def regress(session: nox.Session) -> None:
    """pytest-benchmark speed suite at fixed shapes, autosaved; add --benchmark-compare-fail on stable machines."""
    install(session, "test")
    session.run(
        "python",
        "-m",
        "pytest",
        "benchmarks",
        "--benchmark-enable",
        "--benchmark-autosave",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


@nox.session(**VENV)
def peers(session: nox.Session) -> None:
    """The peer backends (ONNX Runtime, OpenVINO, JAX) against torch.nn: the optional extra."""
    install(session, "test", "peers")
    session.run("python", "-m", "pytest", "tests/test_peers.py", *session.posargs, env=_data_env())


@nox.session(**VENV)
def cluster(session: nox.Session) -> None:
    """`bench run --executor ray` on a local Ray cluster: the optional extra (minutes on 2 cores)."""
    install(session, "test", "cluster")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_cluster.py",
        "tests/test_bench_report.py",
        *session.posargs,
        env={**_data_env(), "CELLBENCH_CLUSTER_TESTS": "1"},
    )
