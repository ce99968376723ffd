"""Byte sizes as people read and write them: one formatter, one parser (a leaf: no cbir imports
but errors).

Shown sizes use decimal SI units (kB, MB, GB, TB: powers of 1000), as disks and file managers
show them and as cbir's limits are set (200 MB per image file). Written sizes may use either SI
units (K, KB, M, MB ...) or binary IEC ones (KiB, MiB ...: powers of 1024)."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from cbir.errors import UsageError

MAX_BYTES = 2**63 - 1  # a signed 64-bit integer: SQLite's INTEGER, a file offset

_SHOWN_UNITS = ("B", "kB", "MB", "GB", "TB")
_WRITTEN_UNITS = {"": 1, "b": 1} | {
    unit: base**power
    for power, prefix in enumerate("kmgt", start=1)
    for unit, base in ((prefix, 1000), (prefix + "b", 1000), (prefix + "ib", 1024))
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)


def format_bytes(size: float, up: bool = False) -> str:
    """Like "1.5 GB", "528 MB", "64 kB", "12 B": three significant digits at most (one decimal
    below 100 of a unit, none from 100), in the largest unit that keeps the number under 1000.
    ``up`` rounds up rather than to the nearest, for a minimum that must suffice."""
    for power, unit in enumerate(_SHOWN_UNITS):  # noqa: B007 (unit is used after the loop)
        scaled = size / 1000**power
        decimals = 0 if power == 0 or scaled >= 100 else 1
        step = 10**decimals
        shown = (math.ceil(scaled * step) if up else round(scaled * step)) / step
        if shown < 1000:  # else 999.96 kB would show as "1000 kB"
            break
    return f"{shown:.{decimals}f}".removesuffix(".0") + f" {unit}"


def parse_bytes(text: str, what: str = "size", positive: bool = False) -> int:
    """Bytes in a size like "1500", "500K", "2MB", "1.5GiB", "4 GB": K/M/G/T and KB/MB/GB/TB are
    powers of 1000, KiB/MiB/GiB/TiB powers of 1024, a bare number (or B) is bytes; fractions of a
    byte are dropped. ``what`` names the size in errors; ``positive`` refuses zero."""
    match = _SIZE.fullmatch(str(text).strip())
    unit = _WRITTEN_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise UsageError(
            f"invalid {what} {text!r}: use bytes or a number with a unit, e.g. 500K, 2MB or 1.5GiB "
            "(K, M, G, T are powers of 1000; KiB, MiB, GiB, TiB of 1024)"
        )
    # Decimal, not float: exact for "1.5GiB" and for numbers of thousands of digits.
    size = Decimal(match.group(1)) * unit
    if size > MAX_BYTES:
        raise UsageError(f"{what} too large: {text}")
    if positive and int(size) <= 0:
        raise UsageError(f"{what} must be positive, got {text!r}")
    return int(size)
