"""Constructor arguments given as text (``NAME=VALUE``), typed without ``eval``."""

from __future__ import annotations

from typing import Any


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_params(items: list[str]) -> dict[str, Any]:
    """Parse ``NAME=VALUE`` strings (e.g. repeated command-line flags) into typed keywords.

    A value is read as an int, else a float, else a bool (``true``/``false``), else None
    (``none``/``null``), all case-insensitive, else it stays a string. Nothing is evaluated.

    Parameters
    ----------
    items
        Strings of the form ``NAME=VALUE``, ``NAME`` a Python identifier.

    Returns
    -------
    dict
        The keywords, in the order given.

    Raises
    ------
    ValueError
        On an item that is not ``NAME=VALUE`` or a name given twice.

    Examples
    --------
    >>> parse_params(["clustering_threshold=0.8", "n_clusters=5", "flag=true", "name=foo"])
    {'clustering_threshold': 0.8, 'n_clusters': 5, 'flag': True, 'name': 'foo'}
    """
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.isidentifier() or not value:
            raise ValueError(f"clusterer param {item!r} should be NAME=VALUE")
        if name in params:
            raise ValueError(f"clusterer param {name!r} is given twice ({item!r})")
        params[name] = _parse_value(value)
    return params
