"""Byte sizes as people write them in config files and on the command line ("24GiB", "512MiB", "8GB").

Shared by the service config and the memory planner so both read sizes the same way.
"""

from __future__ import annotations

import re
from decimal import Decimal

# IEC suffixes are powers of 1024, SI suffixes powers of 1000; both spellings appear in the wild,
# and treating "GB" as GiB would silently give a budget 7% larger than the user wrote.
_MULTIPLIERS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class SizeError(ValueError):
    """A size that cannot be read; the message names the offending text."""


def parse_bytes(text: str | int) -> int:
    """Bytes in `text`: a plain integer, or a number with an IEC (KiB, MiB, GiB, TiB) or SI (kB, MB, GB, TB)
    suffix, case-insensitive. Fractions are allowed with a suffix ("1.5GiB") and rounded down to whole bytes."""
    if isinstance(text, bool):
        raise SizeError(f"invalid size {text!r}: expected a number of bytes or a string like '24GiB'")
    if isinstance(text, int):
        if text < 0:
            raise SizeError(f"invalid size {text!r}: must not be negative")
        return text
    if not isinstance(text, str):
        raise SizeError(f"invalid size {text!r}: expected a number of bytes or a string like '24GiB'")
    match = _SIZE.match(text)
    if not match:
        raise SizeError(f"invalid size {text!r}: expected a number with an optional unit, like '24GiB' or '8GB'")
    number, unit = match.groups()
    multiplier = _MULTIPLIERS.get(unit.lower())
    if multiplier is None:
        raise SizeError(
            f"invalid size {text!r}: unknown unit {unit!r} (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
        )
    if "." in number and multiplier == 1:
        raise SizeError(f"invalid size {text!r}: a fractional number of bytes")
    # Decimal, not float: "1.1GB" must be exactly 1_100_000_000.
    return int(Decimal(number) * multiplier)


def format_bytes(n: int) -> str:
    """`n` in the largest IEC unit that keeps at least one whole unit, e.g. 25769803776 -> '24.0 GiB'."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
