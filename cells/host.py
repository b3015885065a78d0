"""Facts about the host CPU that more than one part of the project reads."""

from __future__ import annotations

from pathlib import Path


def cpuinfo(field: str) -> str | None:
    """The first value of `field` ('vendor_id', 'model name', ...) in /proc/cpuinfo, or None
    where the file or the field is missing (not Linux, a restricted container)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    return None
