"""argparse `type=` functions: a bad value is reported by argparse as `argument --flag: ...`, before any work."""

from __future__ import annotations

import argparse
import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def positive_int(value: str) -> int:
    """An integer above zero."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return number


def parse_size(value: str) -> int:
    """'500000', '200K', '1.5M', '2G', '64MiB' -> bytes (K/M/G/T are powers of 1000, KiB/MiB/... of 1024)."""
    match = _SIZE.match(value)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (examples: 500000, 200K, 1.5M, 2G, 64MiB)")
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    size = int(float(number) * (1024 if binary else 1000) ** power)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {value!r}")
    return size
