"""Constructor arguments given as text (``NAME=VALUE``), typed without ``eval``."""

from __future__ import annotations

import re
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.8"`` -> 0.8, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _INT.match(low):
        return int(low)
    if _FLOAT.match(low) or low in ("inf", "-inf"):
        return float(low)
    return text.strip()


def parse_params(items: list[str]) -> dict[str, Any]:
    """Parse ``["eps=0.3", "mu=4"]`` into ``{"eps": 0.3, "mu": 4}``.

    >>> parse_params(["clustering_threshold=0.8", "n_clusters=5", "flag=true"])
    {'clustering_threshold': 0.8, 'n_clusters': 5, 'flag': True}
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ValueError(f"clusterer param {item!r} should be NAME=VALUE")
        out[name] = parse_value(value)
    return out
