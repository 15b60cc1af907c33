"""Helpers of the deploy/ tests: the PromQL of the Grafana dashboard and of the Prometheus
rules, taken apart and sent to a real Prometheus.

What "a query works" means here, for every query a person relies on:

1. it parses and evaluates: Prometheus' ``/api/v1/query`` answers ``success``;
2. it returns at least one series;
3. every metric selector in it (``name{matchers}``), sent alone, returns at least one series.

(3) is what catches a renamed or misspelt metric even where (2) would not: a selector on the
right of ``or``, or ``... or vector(0)``, hides an empty operand from (2).

Alerting rules are different: an alert that is not firing returns nothing, so (2) cannot be
asked of the expression as written. For those, :func:`strip_comparisons` removes each
comparison against a number literal (``> 0.5``, ``== 0``, ``>= bool 1``), which turns the
alert's condition into the quantity it compares (``x > 0.5`` into ``x``; ``a > 0 and on (job)
b == 0`` into ``a and on (job) b``), and (2) is asked of that: the quantity an alert watches
must exist in a healthy deployment, even at a value that does not fire. (1) and (3) are asked
of the original expression too. The rules are written with the number on the right of each
comparison, which :func:`strip_comparisons` relies on; a comparison it cannot strip leaves the
expression as it is, and (2) then fails loudly rather than passing silently.
"""

from __future__ import annotations

import copy
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

# words that are PromQL syntax, not metric names, when not followed by "("
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2"}
# keywords followed by a parenthesised list of label names
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_GROUPING = re.compile(r"(?:by|without)\s*\(", re.I)
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?" + _NUMBER + r"(?![\w.:])")
# Grafana's built-in interval variables, with values fit for a short-lived test Prometheus
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _skip_string(s: str, i: int) -> int:
    quote = s[i]
    i += 1
    while i < len(s) and s[i] != quote:
        i += 2 if s[i] == "\\" and quote != "`" else 1
    return i + 1


def _skip_group(s: str, i: int, open_: str, close: str) -> int:
    """Index just past the bracket closing the one at ``i`` (strings inside skipped)."""
    depth = 0
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_}{close} in {s!r}")


def metric_selectors(expr: str) -> list[str]:
    """Every instant-vector selector of a PromQL expression, as written (name and matchers).

    >>> metric_selectors('sum by (job, le) (rate(x_bucket{stage="a b"}[5m])) / on(job) y')
    ['x_bucket{stage="a b"}', 'y']
    >>> metric_selectors('max without (instance) (z offset 5m) unless {__name__="w"}')
    ['z', '{__name__="w"}']
    >>> metric_selectors('histogram_quantile(0.99, a:b:c{job=~"$job"}) > bool 0.5 or vector(1)')
    ['a:b:c{job=~"$job"}']
    """
    out: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "[":
            i = _skip_group(expr, i, "[", "]")
        elif c == "{":  # a selector without a name: {__name__="x"}
            j = _skip_group(expr, i, "{", "}")
            out.append(expr[i:j])
            i = j
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = re.compile(r"[\w.]+").match(expr, i)
            i = m.end() if m else i + 1
        elif c.isalpha() or c in "_:":
            m = _NAME.match(expr, i)
            assert m is not None
            word, j = m.group(), m.end()
            k = j
            while k < n and expr[k].isspace():
                k += 1
            if word.lower() in LABEL_LISTS and k < n and expr[k] == "(":
                i = _skip_group(expr, k, "(", ")")
            elif (k < n and expr[k] == "(") or _GROUPING.match(expr, k) \
                    or word.lower() in KEYWORDS:
                i = j  # a function, an aggregation (also `sum by (x) (...)`), a keyword
            elif k < n and expr[k] == "{":
                end = _skip_group(expr, k, "{", "}")
                out.append(word + expr[k:end])
                i = end
            else:
                out.append(word)
                i = j
        else:
            i += 1
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names of the selectors of ``expr``."""
    names = set()
    for sel in metric_selectors(expr):
        if sel.startswith("{"):
            m = re.search(r'__name__\s*=\s*"([^"]+)"', sel)
            if m:
                names.add(m.group(1))
        else:
            names.add(_NAME.match(sel).group())  # type: ignore[union-attr]
    return names


def strip_comparisons(expr: str) -> str:
    """``expr`` without its comparisons against number literals (see the module docstring).

    >>> strip_comparisons('delta(a[10m]) > 0\\nand on (job)\\nsum by (job) (b) == 0')
    'delta(a[10m])\\nand on (job)\\nsum by (job) (b)'
    >>> strip_comparisons('up{job="x", code!="500"} == 0')
    'up{job="x", code!="500"}'
    >>> strip_comparisons('x >= bool 1e3')
    'x'
    """
    return _COMPARISON.sub("", expr)


# -- the dashboard -------------------------------------------------------------------------
def iter_panels(panels: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, expr)`` of every panel target of the dashboard."""
    out = []
    for p in iter_panels(dashboard["panels"]):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f"panel {p['title']!r} target {t.get('refId')}", t["expr"]))
    return out


def _label_values(query: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query, re.S)
    if not m:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return m.group(1), m.group(2)


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables in ``expr``: ``$name`` and ``${name}``, built-ins first."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


# -- a Prometheus server's HTTP API --------------------------------------------------------
class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: the body says why
            return json.loads(exc.read() or b"{}") or {"status": "error", "error": str(exc)}

    def query(self, expr: str) -> tuple[list[dict[str, Any]] | None, str]:
        """The result of an instant query, or None and the error."""
        body = self._get("/api/v1/query", [("query", expr)])
        if body.get("status") != "success":
            return None, f"{body.get('errorType')}: {body.get('error')}"
        data = body["data"]
        result = data["result"]
        return (result if data["resultType"] in ("vector", "matrix") else [result]), ""

    def series(self, selector: str) -> list[dict[str, str]]:
        body = self._get("/api/v1/series", [("match[]", selector)])
        return body.get("data", []) if body.get("status") == "success" else []


def check_query(prom: Prometheus, where: str, expr: str, alert: bool = False) -> list[str]:
    """Problems of one query (empty: it works), per the module docstring."""
    problems = []
    result, error = prom.query(expr)
    if result is None:
        return [f"{where}: does not evaluate: {error}\n    {expr}"]
    if alert:
        stripped = strip_comparisons(expr)
        result, error = prom.query(stripped)
        if result is None:
            problems.append(f"{where}: without its comparisons it does not evaluate: {error}"
                            f"\n    {stripped}")
        elif not result:
            problems.append(f"{where}: the quantity the alert compares returns no series"
                            f"\n    {stripped}")
    elif not result:
        problems.append(f"{where}: returns no series\n    {expr}")
    for sel in metric_selectors(expr):
        found, error = prom.query(sel)
        if not found:
            problems.append(f"{where}: selector {sel} returns no series {error}".rstrip())
    return problems


def resolve_variables(dashboard: dict[str, Any], prom: Prometheus) -> tuple[dict[str, str],
                                                                            list[str]]:
    """Values of the dashboard's query variables as Grafana would give "All" of them: the
    values of ``label_values(selector, label)`` in Prometheus, as one regex alternation."""
    values: dict[str, str] = {}
    problems = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        selector, label = _label_values(q)
        selector = substitute(selector, values)
        for sel in metric_selectors(selector):
            if not prom.series(sel):
                problems.append(f"variable ${var['name']}: selector {sel} has no series")
        found = sorted({s[label] for s in prom.series(selector) if label in s})
        if not found:
            problems.append(f"variable ${var['name']}: label_values({selector}, {label}) is "
                            "empty")
            found = ["no-value"]
        # as Grafana writes a multi-value variable into a PromQL regex: each value
        # regex-escaped, and the backslashes doubled inside the PromQL string
        values[var["name"]] = "(" + "|".join(re.escape(v).replace("\\", "\\\\")
                                             for v in found) + ")"
    return values, problems


def check_dashboard(dashboard: dict[str, Any], prom: Prometheus) -> list[str]:
    """Problems of every template variable and panel query of ``dashboard``."""
    values, problems = resolve_variables(dashboard, prom)
    for where, expr in dashboard_queries(dashboard):
        problems += check_query(prom, where, substitute(expr, values))
    return problems


def rule_queries(rules: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(where, expr, is_alert)`` of every rule of a Prometheus rules file."""
    out = []
    for group in rules["groups"]:
        for r in group["rules"]:
            if "alert" in r:
                out.append((f"alert {r['alert']}", r["expr"], True))
            else:
                out.append((f"recording rule {r['record']}", r["expr"], False))
    return out


def check_rules(rules: dict[str, Any], prom: Prometheus) -> list[str]:
    """Problems of every rule expression, and of every recorded series (it must exist)."""
    problems = []
    for where, expr, alert in rule_queries(rules):
        problems += check_query(prom, where, expr, alert=alert)
    for group in rules["groups"]:
        for r in group["rules"]:
            if "record" in r and not prom.query(r["record"])[0]:
                problems.append(f"recording rule {r['record']}: no series recorded")
    return problems


def misspell(dashboard: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A copy of ``dashboard`` whose first panel query containing ``old`` has ``new``."""
    out = copy.deepcopy(dashboard)
    for p in iter_panels(out["panels"]):
        for t in p.get("targets", []):
            if old in t.get("expr", ""):
                t["expr"] = t["expr"].replace(old, new)
                return out
    raise ValueError(f"no panel query contains {old!r}")
