"""``topicstream report``: one self-contained HTML file about a model, with its figures.

The report shows:

- a **topic map**: the centroids of the heaviest clusters projected on their first two
  principal components (weighted PCA, plain numpy), point area by weight, colour by macro
  topic, the largest labelled with their keywords; with a document sample (``cluster
  --report``, which still has the encoder and the texts) the documents are drawn under them;
- a **topic timeline**: the share of the documents of each window that went to each of the
  top topics, over stream time in documents (the project's clock), the first document of
  every emerging topic marked;
- **drift over time**: per window, the Jensen-Shannon divergence between its cluster-share
  distribution and the previous window's, the new-cluster and outlier rates, and the mean
  similarity of the documents to their centroid (:mod:`stream.drift`'s measures that need
  no embeddings);
- the **top topics** with keywords, exemplars, size, growth and macro topic.

The timeline and the drift need the assignment of every document in stream order: the
assignments JSONL that ``topicstream cluster`` writes (``report --dataset``), or the run
itself (``cluster --report``). From a stored state alone they are left out, and the report
says so: the store keeps no per-document history.

The figures are PNG (matplotlib, Agg backend), written to the output directory and embedded
in ``report.html`` as base64 data: the HTML file needs nothing else.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.board import TopicView
from stream.drift import js_divergence

log = logging.getLogger(__name__)

PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0c8599", "#c2255c",
           "#5c940d", "#1864ab", "#862e9c", "#a61e4d", "#495057"]
MAP_CLUSTERS = 400  # heaviest clusters drawn on the map
LABELLED = 10  # of which labelled with keywords
TIMELINE_TOPICS = 12


@dataclass
class Assignments:
    """Per document, in stream order: its cluster and what the clusterer said of it."""

    cluster_ids: np.ndarray  # (n,) int64
    similarity: np.ndarray  # (n,) float64
    is_new: np.ndarray  # (n,) bool
    is_outlier: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return int(self.cluster_ids.shape[0])


@dataclass
class DocumentSample:
    """Embedded documents to draw on the map: unit vectors and their clusters."""

    X: np.ndarray  # (m, dim)
    cluster_ids: np.ndarray  # (m,)


def read_assignments(path: Path) -> Assignments:
    """The assignments JSONL of ``topicstream cluster`` (one object per line, stream order)."""
    cids: list[int] = []
    sims: list[float] = []
    new: list[bool] = []
    out: list[bool] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                cids.append(int(obj["cluster_id"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not an assignment of topicstream cluster "
                                 f"(needs cluster_id): {line[:80]!r}") from exc
            sims.append(float(obj.get("similarity", np.nan)))
            new.append(bool(obj.get("is_new_cluster", False)))
            out.append(bool(obj.get("is_outlier", False)))
    if not cids:
        raise ValueError(f"{path}: no assignments in it")
    return Assignments(np.asarray(cids, np.int64), np.asarray(sims), np.asarray(new, bool),
                       np.asarray(out, bool))


def follow(cluster_ids: np.ndarray, merges: list[tuple[int, int]]) -> np.ndarray:
    """Cluster ids with the announced merges applied (``src`` now means ``dst``)."""
    if not merges:
        return cluster_ids
    from stream.evaluate import follow_merges

    return np.asarray(follow_merges(cluster_ids.tolist(), merges), np.int64)


def weighted_pca(X: np.ndarray, w: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the first ``k`` principal axes ``(k, dim)`` of the rows of ``X`` weighted by
    ``w`` (SVD of the weighted, centred rows)."""
    w = np.asarray(w, np.float64)
    w = w / max(float(w.sum()), 1e-300)
    mean = (w[:, None] * X).sum(axis=0)
    _, _, vt = np.linalg.svd(np.sqrt(w)[:, None] * (X - mean), full_matrices=False)
    axes = vt[:k]
    if axes.shape[0] < k:  # fewer rows than k: pad with zero axes
        axes = np.vstack([axes, np.zeros((k - axes.shape[0], X.shape[1]))])
    return mean, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _macro_colors(view: TopicView) -> dict[int, str]:
    return {m.id: PALETTE[i % len(PALETTE)] for i, m in enumerate(view.macros)}


def topic_map(view: TopicView, sample: DocumentSample | None = None) -> bytes:
    """The map of the heaviest clusters (and of the document sample), as PNG bytes."""
    plt = _pyplot()
    order = view.order("weight")[:MAP_CLUSTERS]
    C = view.clusters.centroids[order].astype(np.float64)
    w = view.weights[order]
    mean, axes = weighted_pca(C, np.maximum(w, 1e-9))
    P = (C - mean) @ axes.T
    colors = _macro_colors(view)
    col = [colors.get(int(m), "#868e96") for m in view.macro[order].tolist()]
    fig, ax = plt.subplots(figsize=(11, 7.5))
    if sample is not None and len(sample.X):
        D = (sample.X.astype(np.float64) - mean) @ axes.T
        row = {int(c): i for i, c in enumerate(view.ids.tolist())}
        dcol = [colors.get(int(view.macro[row[c]]), "#adb5bd") if c in row else "#adb5bd"
                for c in sample.cluster_ids.tolist()]
        ax.scatter(D[:, 0], D[:, 1], s=9, c=dcol, alpha=0.6, linewidths=0, zorder=3,
                   marker="x")
    area = 15 + 1500 * (w / max(float(w.max()), 1e-9))
    ax.scatter(P[:, 0], P[:, 1], s=area, c=col, alpha=0.55, edgecolors="white", linewidths=1,
               zorder=2)
    kw = view.keywords(view.ids[order[:LABELLED]].tolist())
    for j in range(min(LABELLED, len(order))):
        cid = int(view.ids[order[j]])
        ax.annotate(", ".join(kw.get(cid, [])[:3]) or f"#{cid}", (P[j, 0], P[j, 1]),
                    fontsize=8.5, ha="center", va="center", zorder=3,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.75))
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[m.id], markersize=8,
                          label=", ".join(m.keywords[:3]) or f"#{m.id}")
               for m in view.macros[:12]]
    ax.legend(handles=handles, title="macro topics", loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
    docs = f", x = {len(sample.X)} sampled documents" if sample is not None and len(sample.X) else ""
    ax.set_title(f"Topic map: the {len(order)} heaviest of {len(view.ids)} clusters "
                 f"(PCA of centroids; area = weight{docs})", fontsize=12)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.grid(alpha=0.2)
    out = _png(fig)
    plt.close(fig)
    return out


def windows_of(n: int, target: int = 20, least: int = 50) -> np.ndarray:
    """Window boundaries over ``n`` documents: about ``target`` windows of at least ``least``
    documents (shares of smaller windows are mostly noise)."""
    size = max(min(least, n), int(np.ceil(n / target)), 1)
    return np.arange(0, n + size, size).clip(max=n)


def topic_timeline(view: TopicView, asg: Assignments) -> bytes:
    """Shares of the top topics per window of documents, emerging alerts marked (PNG).

    The top topics are the ``TIMELINE_TOPICS`` clusters with the most documents in the
    stream (ids as they stand after the announced merges), stacked in the order they first
    appeared, so stories read from left to right as they arrived; every other cluster is
    "other topics". Each emerging alert is a tick on the top edge, at the cluster's first
    document."""
    plt = _pyplot()
    n = len(asg)
    bounds = np.unique(windows_of(n))
    n_win = len(bounds) - 1
    win = np.searchsorted(bounds, np.arange(n), side="right") - 1
    win = win.clip(0, max(n_win - 1, 0))
    cids = asg.cluster_ids
    uniq, first, counts = np.unique(cids, return_index=True, return_counts=True)
    top = np.argsort(-counts, kind="stable")[:TIMELINE_TOPICS]
    top = top[np.argsort(first[top], kind="stable")]  # in order of arrival
    top_ids = uniq[top]
    other = len(top_ids)
    slot = np.full(uniq.size, other, np.int64)
    slot[top] = np.arange(other)
    group = slot[np.searchsorted(uniq, cids)]
    M = np.zeros((other + 1, max(n_win, 1)))
    np.add.at(M, (group, win), 1.0)
    shares = M / np.maximum(M.sum(axis=0), 1.0)
    mids = (bounds[:-1] + bounds[1:]) / 2 if n_win else np.array([n / 2])
    kw = view.keywords([int(c) for c in top_ids.tolist()])
    labels = [", ".join(kw.get(int(c), [])[:3]) or f"#{int(c)}" for c in top_ids.tolist()]
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.stackplot(mids, shares, labels=labels + ["other topics"],
                 colors=[PALETTE[j % len(PALETTE)] for j in range(other)] + ["#dee2e6"],
                 alpha=0.9)
    emerging = [int(c) for c in view.ids[view.emerging].tolist() if (cids == c).any()]
    at = [int(np.argmax(cids == c)) for c in emerging]
    if at:
        ax.plot(at, [1.0] * len(at), ls="", marker="v", ms=7, color="#d9480f", clip_on=False,
                label=f"emerging alert ({len(at)})")
    ax.set_xlim(0, n)
    ax.set_ylim(0, 1)
    ax.set_xlabel("stream time (documents)")
    ax.set_ylabel("share of the window's documents")
    size = int(bounds[1] - bounds[0]) if n_win else n
    ax.set_title(f"Topic timeline: the {other} largest topics, windows of {size} documents",
                 fontsize=12, pad=14)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9,
              title="topics, by arrival")
    out = _png(fig)
    plt.close(fig)
    return out


def drift_series(asg: Assignments) -> dict[str, np.ndarray]:
    """Per window of documents: JS divergence to the previous window's cluster shares,
    new-cluster and outlier rates, mean similarity."""
    bounds = np.unique(windows_of(len(asg)))
    out: dict[str, list[float]] = {"end": [], "divergence": [], "new": [], "outliers": [],
                                   "similarity": []}
    prev: dict[int, float] | None = None
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        u, c = np.unique(asg.cluster_ids[a:b], return_counts=True)
        dist = dict(zip(u.tolist(), c.astype(float).tolist(), strict=True))
        out["end"].append(float(b))
        out["divergence"].append(np.nan if prev is None else js_divergence(prev, dist))
        out["new"].append(float(asg.is_new[a:b].mean()))
        out["outliers"].append(float(asg.is_outlier[a:b].mean()))
        sims = asg.similarity[a:b]
        out["similarity"].append(float(np.nanmean(sims)) if np.isfinite(sims).any() else np.nan)
        prev = dist
    return {k: np.asarray(v) for k, v in out.items()}


def drift_figure(asg: Assignments) -> bytes:
    plt = _pyplot()
    d = drift_series(asg)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    ax1.plot(d["end"], d["divergence"], color="#2f6fde", marker="o", ms=3,
             label="JS divergence to the previous window (bits)")
    ax1.plot(d["end"], d["similarity"], color="#2b8a3e", marker="o", ms=3,
             label="mean similarity to the assigned centroid")
    ax1.set_ylim(0, 1.05)
    ax1.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    ax1.grid(alpha=0.25)
    ax2.plot(d["end"], d["new"], color="#d9480f", marker="o", ms=3, label="new-cluster rate")
    ax2.plot(d["end"], d["outliers"], color="#9c36b5", marker="o", ms=3, label="outlier rate")
    ax2.set_ylim(0, max(0.05, float(np.nanmax(np.concatenate([d["new"], d["outliers"]]))) * 1.15))
    ax2.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    ax2.grid(alpha=0.25)
    ax2.set_xlabel("stream time (documents, end of each window)")
    ax1.set_title("Drift over time", fontsize=12)
    out = _png(fig)
    plt.close(fig)
    return out


CSS = """
body{font:14px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
h1{margin:0 0 4px;font-size:24px}h2{margin:28px 0 8px;font-size:18px}
.meta{color:#667085}.fig{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:10px}
.fig img{max-width:100%;height:auto;display:block;margin:0 auto}
.note{color:#667085;background:#fff;border:1px dashed #ccd1d9;border-radius:8px;padding:10px 14px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e3e6eb}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{background:#f1f3f5;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#495057}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.kw{font-weight:600}.ex{color:#414a5a;font-size:12px;margin:2px 0 0;padding-left:16px}
.badge{background:#d9480f;color:#fff;border-radius:10px;padding:1px 6px;font-size:10px;font-weight:700;text-transform:uppercase}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
"""


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return (f'<div class="fig"><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
            f'id="{html.escape(name)}"></div>')


def write_report(out_dir: Path, view: TopicView, model: str,
                 assignments: Assignments | None = None, sample: DocumentSample | None = None,
                 top: int = 25, source: str = "") -> Path:
    """Write ``report.html`` and the PNGs (``topic_map.png``, ``timeline.png``,
    ``drift.png`` when the assignments are known) into ``out_dir``; return the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs: list[tuple[str, str, bytes | None, str]] = []
    figs.append(("topic_map", "Topic map", topic_map(view, sample), ""))
    if assignments is not None and len(assignments):
        figs.append(("timeline", "Topic timeline", topic_timeline(view, assignments), ""))
        figs.append(("drift", "Drift over time", drift_figure(assignments), ""))
    else:
        why = ("The store keeps no per-document history: give the assignments of "
               "<code>topicstream cluster</code> with <code>--dataset PATH</code> (or run "
               "<code>topicstream cluster FILE --report DIR</code>) for the timeline and the drift.")
        figs.append(("timeline", "Topic timeline", None, why))
        figs.append(("drift", "Drift over time", None, why))
    for name, _, png, _ in figs:
        if png is not None:
            (out_dir / f"{name}.png").write_bytes(png)
    colors = _macro_colors(view)
    rows = view.order("weight")[:top]
    kw = view.keywords(view.ids[rows].tolist())
    macro_kw = {m.id: ", ".join(m.keywords[:3]) for m in view.macros}
    trs = []
    for i in rows.tolist():
        cid = int(view.ids[i])
        m = int(view.macro[i])
        ex = "".join(f"<li>{html.escape(x)}</li>" for x in view.exemplars(cid)[:3])
        badge = ' <span class="badge">emerging</span>' if view.emerging[i] else ""
        trs.append(
            f"<tr><td class=num>#{cid}</td><td><span class=kw>"
            f"{html.escape(', '.join(kw.get(cid, [])))}</span>{badge}<ul class=ex>{ex}</ul></td>"
            f"<td class=num>{int(view.sizes[i]):,}</td><td class=num>{view.weights[i]:,.1f}</td>"
            f"<td class=num>{view.growth[i]:+.1f}</td><td><span class=sw style='background:"
            f"{colors.get(m, '#868e96')}'></span>{html.escape(macro_kw.get(m, ''))}</td></tr>")
    sections = []
    for name, title, png, note in figs:
        body = _img(name, png, title) if png is not None else f'<p class="note">{note}</p>'
        sections.append(f"<h2>{title}</h2>{body}")
    n_emerging = int(view.emerging.sum())
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>topicstream report: {html.escape(model)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>{CSS}</style></head><body><main>
<h1>topicstream report: model {html.escape(model)}</h1>
<p class="meta">{view.n_docs:,} documents · {len(view.ids):,} clusters in {len(view.macros)} macro
topics · {n_emerging} emerging · version {view.version}{(' · ' + html.escape(source)) if source else ''}</p>
{''.join(sections)}
<h2>Top topics</h2>
<table><thead><tr><th>id</th><th>keywords and exemplars</th><th>size</th><th>weight</th>
<th>growth</th><th>macro topic</th></tr></thead><tbody>{''.join(trs)}</tbody></table>
</main></body></html>
"""
    path = out_dir / "report.html"
    path.write_text(doc, encoding="utf-8")
    log.info("report written to %s", path)
    return path
