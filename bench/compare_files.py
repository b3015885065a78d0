"""The record files of `bench compare`: their format, the machine identity they are keyed by,
and loading them with every problem named (never a silent pass)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
from pathlib import Path

from .environment import cpu_model

FORMAT = "cellbench-compare/1"
SHAPE_KEYS = ("input_size", "hidden_size", "batch", "seq_len")
MIN_ROUNDS = 4  # below this the Mann-Whitney test can never reach p < 0.05


class CompareError(Exception):
    """A usage or file problem: exit status 2 with this message."""


# --- machine identity --------------------------------------------------------------------
def machine_info() -> dict:
    import torch

    info = dict(
        cpu=cpu_model() or platform.machine(),
        cores=os.cpu_count(),
        arch=platform.machine(),
        system=platform.system(),
        node=platform.node(),
        python=platform.python_version(),
    )
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_name(info: dict) -> str:
    """Hardware, not host name (CI runners change names): CPU model, cores, arch, GPU."""
    text = f"{info.get('cpu', '?')}-{info.get('cores', '?')}c-{info.get('arch', '?')}"
    if info.get("gpu"):
        text += f"-{info['gpu']}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def machine_key(machine: str, torch_version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{machine}__torch-{torch_version}")


# --- loading and checking files ------------------------------------------------------------
def load(path: str | os.PathLike, role: str = "file") -> dict:
    path = Path(path)
    if not path.exists():
        hint = (
            " Record one with `python -m bench compare --record PATH`."
            if role == "baseline"
            else ""
        )
        raise CompareError(f"{role} {path} does not exist.{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{role} {path} is not readable JSON: {exc}") from None
    problem = _malformed(data)
    if problem:
        raise CompareError(f"{role} {path} is malformed: {problem}")
    return data


def _malformed(data) -> str:
    if not isinstance(data, dict):
        return "expected a JSON object"
    if data.get("format") != FORMAT:
        return f"format is {data.get('format')!r}, expected {FORMAT!r}"
    for key in ("machine", "torch", "results"):
        if key not in data:
            return f"no {key!r} field"
    if not isinstance(data["results"], list) or not data["results"]:
        return "no results"
    for i, r in enumerate(data["results"]):
        if not isinstance(r, dict) or not {"kind", "backend", "mode", "shape", "ratios"} <= set(r):
            return f"result {i} lacks kind/backend/mode/shape/ratios"
        shape = r["shape"]
        if not (
            isinstance(shape, dict)
            and set(SHAPE_KEYS) <= set(shape)
            and all(_positive_int(shape[k]) for k in SHAPE_KEYS)
        ):
            return (
                f"result {i} has shape {shape!r}; expected an object with positive integers "
                f"{', '.join(SHAPE_KEYS)}"
            )
        ratios = r["ratios"]
        if not isinstance(ratios, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
            for x in ratios
        ):
            what = f"{r.get('kind')}/{r.get('backend')}/{r.get('mode')}"
            return f"result {i} ({what}) has invalid ratios"
        if len(ratios) < MIN_ROUNDS:
            return (
                f"result {i} ({r['kind']}/{r['backend']}/{r['mode']}) has {len(ratios)} rounds; "
                f"at least {MIN_ROUNDS} are needed for a significance test"
            )
    return ""


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def resolve_baseline(path: str | os.PathLike, new: dict) -> Path:
    """A file as it is; a directory: its file for NEW's machine key."""
    path = Path(path)
    if not path.is_dir():
        return path
    key = new.get("key") or machine_key(new["machine"], new["torch"])
    candidate = path / f"{key}.json"
    if not candidate.exists():
        found = sorted(p.name for p in path.glob("*.json"))
        raise CompareError(
            f"no baseline for this machine and torch version ({key}) in {path}; "
            f"found: {', '.join(found) or 'none'}. Record one with "
            f"`python -m bench compare --record {path}` on this machine."
        )
    return candidate


def mismatches(base: dict, new: dict) -> list[str]:
    out = []
    if base["machine"] != new["machine"]:
        out.append(f"machine differs: baseline {base['machine']!r}, new {new['machine']!r}")
    if base["torch"] != new["torch"]:
        out.append(f"torch differs: baseline {base['torch']}, new {new['torch']}")
    for key in ("threads", "device"):
        b, n = base.get("settings", {}).get(key), new.get("settings", {}).get(key)
        if b != n:
            out.append(f"{key} differs: baseline {b}, new {n}")
    return out
