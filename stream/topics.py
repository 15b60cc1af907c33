"""Topics people can read: keywords, exemplars and emerging-topic detection, per cluster.

Each public cluster id has a :class:`TopicCard`: a bounded, decayed keyword sketch, its
few best exemplars and the counters of the emerging-topic detector. The cards of a model,
plus one sketch of the terms of all clusters (the "all" card, which class-based TF-IDF
weighs each cluster against), form the :class:`TopicState`. It lives with the clusterer
state in the store: same commit, same fencing, plain JSON (no pickle).

The contract mirrors :mod:`stream.clustering.base`: a batch yields a :class:`TopicDelta`
(per touched cluster, the batch's term counts, exemplar candidates and per-bucket arrival
counts; then the merges and removals of public ids), and :func:`apply_topic_delta` is the
one definition of how a delta changes a state. The Redis store's ``commit.lua`` implements
the same arithmetic; a test holds the two together.

Keywords (bounded memory)
-------------------------
A card keeps at most ``keyword_capacity`` terms, with counts decayed like the clusterer's
weights (half-life in documents, the same clock ``t``): after adding a batch the lightest
terms beyond the capacity are dropped (top-N with decay: a new term enters as soon as it
outweighs the decayed tail). The "all" card keeps ``vocabulary_capacity`` terms. Memory is
therefore at most ``clusters x keyword_capacity + vocabulary_capacity`` terms, whatever the
vocabulary of the stream. Keywords are the top terms of a card by class-based TF-IDF
(Grootendorst, BERTopic 2022): ``tf(t, c) * log(1 + A / f(t))``, ``A`` the mean number of
terms per cluster and ``f(t)`` the term's count over all clusters.

Exemplars
---------
The ``n_exemplars`` documents most similar to the cluster's centroid when they were
assigned (their similarity is the score), one per distinct text, truncated to
``EXEMPLAR_CHARS``.

Emerging topics
---------------
Stream time is the documents' own timestamps (``ts``), cut into buckets of ``bucket_s``
seconds, so a replay or a backfill alerts exactly as the live stream did. Per cluster the
detector keeps the count of the current bucket and an exponentially weighted mean and
variance (Finch 2009; weight ``alpha``) of the counts of the buckets before it, empty
buckets included. A cluster's score is ``(n - mean) / sqrt(var + mean + 1)``: how far the
current bucket stands above the cluster's own baseline, in units of its spread (``mean``
for Poisson noise, ``+ 1`` so that a newborn cluster, whose baseline is zero, scores its
count). A cluster *emerges* at the document that brings its current bucket to at least
``min_count`` documents with a score of at least ``z_threshold``; it is announced once
(``alerted`` is kept in the card and survives merges: a merge of an alerted cluster never
alerts again).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stream.clustering.base import decay_factor

_TOKEN = re.compile(r"[^\W\d_][^\W_]*(?:['’][^\W_]+)?", re.UNICODE)

STOP_WORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "says", "said", "say", "new", "after", "amid", "over", "amid", "its", "it's", "per", "via", "us", "mr", "ms", "one", "two", "three", "first", "last", "year", "years", "week", "weeks", "day", "days", "says", "could", "would", "may", "might", "must", "shall"])

EXEMPLAR_CHARS = 280
MAX_GAP_BUCKETS = 64  # empty buckets folded into the baseline one by one, at most (then ~0)
ALL = "all"  # field of the all-clusters sketch in a serialised state


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stop words or one-letter tokens.

    >>> tokenize("The Mars rover's ice find, 2 days on")
    ['mars', "rover's", 'ice', 'find']
    """
    return [t for t in _TOKEN.findall(text.lower()) if len(t) > 1 and t not in STOP_WORDS]


@dataclass(frozen=True)
class TopicParams:
    """Hyperparameters of keywords, exemplars and the emerging-topic detector.

    Parameters
    ----------
    keyword_capacity
        Terms kept per cluster (its bounded vocabulary).
    vocabulary_capacity
        Terms kept in the all-clusters sketch that keywords are weighed against.
    n_keywords
        Keywords shown per cluster.
    n_exemplars
        Exemplar documents kept per cluster.
    half_life
        Half-life of term counts, in documents (the clusterer's clock); None: no decay.
    bucket_s
        Width of a stream-time bucket of the emerging-topic detector, in seconds.
    alpha
        Weight of the newest bucket in the baseline's exponentially weighted mean and
        variance.
    min_count
        Documents a cluster needs in one bucket to emerge.
    z_threshold
        Score (see the module docstring) a cluster needs to emerge.
    novelty
        Largest cosine between a candidate's centroid and the centroid of a cluster already
        announced as emerging: a candidate closer than this is a facet of a story already
        announced, not a new one (1 disables the test).
    """

    keyword_capacity: int = 32
    vocabulary_capacity: int = 4096
    n_keywords: int = 8
    n_exemplars: int = 5
    half_life: float | None = 5000.0
    bucket_s: float = 300.0
    alpha: float = 0.2
    min_count: int = 6
    z_threshold: float = 3.0
    novelty: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            (self.keyword_capacity >= 1, f"keyword_capacity={self.keyword_capacity} should be >= 1"),
            (self.vocabulary_capacity >= 1,
             f"vocabulary_capacity={self.vocabulary_capacity} should be >= 1"),
            (self.n_keywords >= 1, f"n_keywords={self.n_keywords} should be >= 1"),
            (self.n_exemplars >= 0, f"n_exemplars={self.n_exemplars} should be >= 0"),
            (self.half_life is None or self.half_life > 0,
             f"half_life={self.half_life} should be > 0 (or None)"),
            (self.bucket_s > 0, f"bucket_s={self.bucket_s} should be > 0"),
            (0.0 < self.alpha <= 1.0, f"alpha={self.alpha} should be > 0 and <= 1"),
            (self.min_count >= 1, f"min_count={self.min_count} should be >= 1"),
            (self.z_threshold >= 0, f"z_threshold={self.z_threshold} should be >= 0"),
            (-1.0 <= self.novelty <= 1.0, f"novelty={self.novelty} should be within [-1, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# -- state -----------------------------------------------------------------------------------
@dataclass
class TopicCard:
    """What a cluster's topic is about and how fast it is arriving."""

    terms: dict[str, float] = field(default_factory=dict)  # decayed counts as of t
    t: float = 0.0  # stream clock (documents) of the last update
    exemplars: list[tuple[float, str, str]] = field(default_factory=list)  # (score, id, text)
    bucket: int = -1  # current stream-time bucket; -1: none yet
    n: float = 0.0  # documents in the current bucket
    mean: float = 0.0  # baseline: weighted mean of the counts of the buckets before
    var: float = 0.0  # and their weighted variance
    alerted: bool = False  # announced as an emerging topic
    born_ts: float = 0.0  # stream time (ts) of its first document
    last_ts: float = 0.0
    size: int = 0  # documents ever

    def to_json(self) -> dict[str, Any]:
        return {"w": self.terms, "t": self.t, "x": [list(e) for e in self.exemplars],
                "b": self.bucket, "n": self.n, "m": self.mean, "v": self.var,
                "a": int(self.alerted), "f": self.born_ts, "l": self.last_ts, "s": self.size}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TopicCard:
        ex = obj.get("x") or []  # Lua's cjson writes an empty list as {}
        terms = obj.get("w") or {}
        return cls(terms={str(k): float(v) for k, v in dict(terms).items()}, t=float(obj["t"]),
                   exemplars=[(float(s), str(i), str(x)) for s, i, x in (ex if isinstance(ex, list) else [])],
                   bucket=int(obj["b"]), n=float(obj["n"]), mean=float(obj["m"]),
                   var=float(obj["v"]), alerted=bool(obj["a"]), born_ts=float(obj["f"]),
                   last_ts=float(obj["l"]), size=int(obj["s"]))


@dataclass
class TopicState:
    """Every cluster's card and the all-clusters term sketch."""

    cards: dict[int, TopicCard] = field(default_factory=dict)
    all_terms: dict[str, float] = field(default_factory=dict)
    all_t: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {ALL: {"w": self.all_terms, "t": self.all_t},
                **{str(c): card.to_json() for c, card in self.cards.items()}}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TopicState:
        every = obj.get(ALL) or {"w": {}, "t": 0.0}
        return cls({int(k): TopicCard.from_json(v) for k, v in obj.items() if k != ALL},
                   {str(k): float(v) for k, v in dict(every.get("w") or {}).items()},
                   float(every["t"]))

    def size(self) -> int:
        """Terms and exemplars held: what must stay bounded on an endless stream."""
        return len(self.all_terms) + sum(len(c.terms) + len(c.exemplars) for c in self.cards.values())


@dataclass
class CardDelta:
    """One batch's contribution to one cluster's card."""

    terms: dict[str, float]
    exemplars: list[tuple[float, str, str]]
    buckets: list[tuple[int, int]]  # (bucket, documents), buckets ascending
    alerted: bool
    first_ts: float
    last_ts: float
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"w": self.terms, "x": [list(e) for e in self.exemplars],
                "b": [list(b) for b in self.buckets], "a": int(self.alerted),
                "f": self.first_ts, "l": self.last_ts, "s": self.size}


@dataclass
class TopicDelta:
    """What one batch changes in the topic state: touched cards, then merges, then removals
    (public cluster ids, as in :class:`~stream.clustering.base.BatchResult`)."""

    cards: dict[int, CardDelta] = field(default_factory=dict)
    all_terms: dict[str, float] = field(default_factory=dict)
    merges: list[tuple[int, int]] = field(default_factory=list)  # (src, dst)
    removed: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"c": {str(c): d.to_json() for c, d in self.cards.items()},
                "w": self.all_terms, "m": [list(p) for p in self.merges], "r": self.removed}


# -- arithmetic (commit.lua implements the same) --------------------------------------------
def _decayed(terms: dict[str, float], f: float) -> dict[str, float]:
    return terms if f == 1.0 else {k: v * f for k, v in terms.items()}


def add_terms(terms: dict[str, float], extra: Mapping[str, float], capacity: int) -> dict[str, float]:
    """``terms + extra``, then only the ``capacity`` heaviest (ties: the smaller term).

    The weights alone are sorted (a C sort of floats, not of (weight, term) pairs through a
    key function): the ``d``-th smallest of them, ``d`` being the number to drop, is the
    cut; every lighter term goes, and of the terms at the cut, the largest go."""
    out = dict(terms)
    for k, v in extra.items():
        out[k] = out.get(k, 0.0) + v
    drop = len(out) - capacity
    if drop > 0:
        cut = sorted(out.values())[drop - 1]
        below = [k for k, v in out.items() if v < cut]
        tied = sorted(k for k, v in out.items() if v == cut)
        for k in below + tied[len(tied) - (drop - len(below)):]:
            del out[k]
    return out


def best_exemplars(a: Iterable[tuple[float, str, str]], b: Iterable[tuple[float, str, str]],
                   n: int) -> list[tuple[float, str, str]]:
    """The ``n`` best of both lists by score (ties: the smaller id), one per distinct text (a
    story's exact repeats, as from syndication, would otherwise fill every place)."""
    seen: dict[str, tuple[float, str, str]] = {}
    for e in [*a, *b]:
        if e[2] not in seen or e[0] > seen[e[2]][0]:
            seen[e[2]] = e
    return sorted(seen.values(), key=lambda e: (-e[0], e[1]))[:n]


def emergence_score(n: np.ndarray | float, mean: float, var: float) -> np.ndarray:
    """``(n - mean) / sqrt(var + mean + 1)``: a bucket count ``n`` against the baseline."""
    return (np.asarray(n, np.float64) - mean) / math.sqrt(var + mean + 1.0)


def _ewma(mean: float, var: float, x: float, alpha: float) -> tuple[float, float]:
    d = x - mean
    inc = alpha * d
    return mean + inc, (1.0 - alpha) * (var + d * inc)


def roll(card: TopicCard, bucket: int, alpha: float) -> None:
    """Move ``card`` to ``bucket``: the closed bucket's count and the empty buckets between
    (at most :data:`MAX_GAP_BUCKETS`) enter the baseline. A bucket at or before the current
    one changes nothing (late documents count in the current bucket)."""
    if card.bucket < 0:
        card.bucket, card.n = bucket, 0.0
        return
    if bucket <= card.bucket:
        return
    card.mean, card.var = _ewma(card.mean, card.var, card.n, alpha)
    for _ in range(min(bucket - card.bucket - 1, MAX_GAP_BUCKETS)):
        card.mean, card.var = _ewma(card.mean, card.var, 0.0, alpha)
    card.bucket, card.n = bucket, 0.0


def _fold(dst: TopicCard, src: TopicCard, t: float, p: TopicParams) -> None:
    """``dst`` absorbs ``src`` at stream clock ``t`` (a merge)."""
    fd, fs = (float(decay_factor(t - c.t, p.half_life)) for c in (dst, src))
    dst.terms = add_terms(_decayed(dst.terms, fd), _decayed(src.terms, fs), p.keyword_capacity)
    dst.t = t
    dst.exemplars = best_exemplars(dst.exemplars, src.exemplars, p.n_exemplars)
    if src.bucket >= 0:
        top = max(dst.bucket, src.bucket)
        roll(dst, top, p.alpha)
        roll(src, top, p.alpha)
        dst.n += src.n
        dst.mean += src.mean  # arrival counts of the two add up, and so do their moments
        dst.var += src.var
    dst.alerted = dst.alerted or src.alerted
    dst.born_ts = min(dst.born_ts, src.born_ts)
    dst.last_ts = max(dst.last_ts, src.last_ts)
    dst.size += src.size


def apply_topic_delta(state: TopicState, delta: TopicDelta, t: float, p: TopicParams) -> TopicState:
    """Return ``state`` with ``delta`` applied at stream clock ``t`` (documents); ``state``
    itself is left as it was.

    In this order: the all-clusters sketch (decayed to ``t``, plus the batch's terms,
    trimmed); each touched card (created if absent: terms decayed to ``t`` and added, then
    trimmed; exemplars merged; each ``(bucket, count)`` rolled in and counted; ``alerted``
    or-ed); the merges in order (``dst`` absorbs ``src``, which is removed; a merge naming
    a missing card does nothing); the removals.
    """
    # copy on write: the cards dict is new, and each card changed here is a new object
    out = TopicState(dict(state.cards), state.all_terms, state.all_t)
    f_all = float(decay_factor(t - out.all_t, p.half_life))
    out.all_terms = add_terms(_decayed(out.all_terms, f_all), delta.all_terms, p.vocabulary_capacity)
    out.all_t = t
    for cid, d in delta.cards.items():
        card = out.cards.get(cid)
        card = out.cards[cid] = (TopicCard(t=t, born_ts=d.first_ts, last_ts=d.last_ts)
                                 if card is None else replace(card))
        f = float(decay_factor(t - card.t, p.half_life))
        card.terms = add_terms(_decayed(card.terms, f), d.terms, p.keyword_capacity)
        card.t = t
        card.exemplars = best_exemplars(card.exemplars, d.exemplars, p.n_exemplars)
        for bucket, count in d.buckets:
            roll(card, bucket, p.alpha)
            card.n += count
        card.alerted = card.alerted or d.alerted
        card.born_ts = min(card.born_ts, d.first_ts)
        card.last_ts = max(card.last_ts, d.last_ts)
        card.size += d.size
    for src, dst in delta.merges:
        if src != dst and src in out.cards and dst in out.cards:
            out.cards[dst] = replace(out.cards[dst])
            _fold(out.cards[dst], replace(out.cards.pop(src)), t, p)
    for cid in delta.removed:
        out.cards.pop(cid, None)
    return out


def ctfidf_keywords(cards: Mapping[int, Mapping[str, float]], all_terms: Mapping[str, float],
                    top_n: int = 8, n_clusters: int | None = None) -> dict[int, list[str]]:
    """Class-based TF-IDF keywords of each card: a term's weight in a cluster is its count
    there times ``log(1 + A / f)``, with ``A`` the mean number of terms per cluster and ``f``
    the term's count over all clusters (at least its count in this one). ``n_clusters``
    (default: ``len(cards)``) is the number of clusters ``all_terms`` covers.

    >>> ctfidf_keywords({1: {"quake": 3, "city": 3}, 2: {"vote": 4, "city": 1}},
    ...                 {"quake": 3, "city": 4, "vote": 4}, top_n=1)
    {1: ['quake'], 2: ['vote']}
    """
    avg = sum(all_terms.values()) / max(n_clusters or len(cards), 1)
    out: dict[int, list[str]] = {}
    for cid, counts in cards.items():
        if not counts:
            out[cid] = []
            continue
        terms = list(counts)
        tf = np.fromiter((counts[k] for k in terms), np.float64, len(terms))
        f = np.fromiter((all_terms.get(k, 0.0) for k in terms), np.float64, len(terms))
        weight = tf * np.log1p(avg / np.maximum(f, tf))
        top = sorted(range(len(terms)), key=lambda i: (-weight[i], terms[i]))[:top_n]
        out[cid] = [terms[i] for i in top]
    return out


# -- the tracker: a worker's local replica ---------------------------------------------------
@dataclass
class Emergence:
    """A cluster that crossed the emerging-topic threshold in this batch."""

    cluster_id: int
    doc_index: int  # the batch row whose document made it cross
    score: float
    bucket_count: float
    baseline: float
    size: int
    born_ts: float
    ts: float


class TopicTracker:
    """Keeps the topic state of a worker's replica and turns each batch into a delta.

    :meth:`learn` computes the batch's :class:`TopicDelta` and its emergences against the
    replica, then applies the delta to the replica (the store applies the same delta at
    commit; after a refused commit the worker :meth:`restore`-s the stored state).
    """

    def __init__(self, params: TopicParams | None = None) -> None:
        self.params = params or TopicParams()
        self.state = TopicState()
        self.t = 0.0

    def restore(self, state: TopicState | None, t: float) -> None:
        """Take ``state`` (e.g. the store's; it is shared, never changed: every update makes
        new cards) as the replica, at stream clock ``t``."""
        self.state = state if state is not None else TopicState()
        self.t = float(t)

    def learn(self, tokens: Sequence[Sequence[str]], doc_ids: Sequence[str], texts: Sequence[str],
              ts: np.ndarray, cluster_ids: np.ndarray, similarity: np.ndarray,
              t: float | None = None, merged: np.ndarray | None = None, faded: np.ndarray | None = None,
              centroids: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
              ) -> tuple[TopicDelta, list[Emergence]]:
        """One batch, row for row: its documents' tokens, ids, texts, timestamps (seconds),
        cluster ids and similarities; ``t`` is the stream clock after the batch (default: the
        tracker's clock plus the batch's documents, as the clusterer counts); ``merged``
        and ``faded`` the public ids the clusterer retired in it. ``centroids`` returns the
        public ids of the model and their unit centroids, for the novelty test; it is only
        called when some cluster crossed the thresholds (without it there is no test)."""
        p = self.params
        n = len(cluster_ids)
        t = self.t + n if t is None else float(t)
        delta = TopicDelta()
        buckets = np.floor(np.asarray(ts, np.float64) / p.bucket_s).astype(np.int64)
        every: Counter[str] = Counter()
        order = np.lexsort((np.arange(n), buckets, cluster_ids))  # by cluster, bucket, arrival
        cids = cluster_ids[order]
        starts = np.flatnonzero(np.concatenate([[True], cids[1:] != cids[:-1]])) if n else \
            np.zeros(0, np.int64)
        candidates: list[tuple[int, Emergence]] = []
        bounds = [*starts.tolist(), n]
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            rows = order[s:e]
            cid = int(cids[s])
            terms: Counter[str] = Counter()
            for r in rows.tolist():
                terms.update(tokens[r])
            every.update(terms)
            sims = similarity[rows]
            top = rows[np.argsort(-sims, kind="stable")[:p.n_exemplars]]
            ex = [(round(float(similarity[r]), 6), doc_ids[r], texts[r][:EXEMPLAR_CHARS])
                  for r in top.tolist()]
            b_rows = buckets[rows]
            ub, first, counts = np.unique(b_rows, return_index=True, return_counts=True)
            d = CardDelta(dict(terms), ex, list(zip(ub.tolist(), counts.tolist(), strict=True)),
                          False, float(ts[rows].min()), float(ts[rows].max()), int(rows.size))
            card = self.state.cards.get(cid)
            hit = self._crossing(card, ub, first, counts, rows)
            if hit is not None:
                candidates.append((cid, self._emergence(cid, card, d, hit, ts, rows)))
            delta.cards[cid] = d
        emerged = self._novel(candidates, centroids)
        for em in emerged:
            delta.cards[em.cluster_id].alerted = True
        delta.all_terms = dict(every)
        if merged is not None:
            delta.merges = [(int(a), int(b)) for a, b in np.asarray(merged).reshape(-1, 2).tolist()]
        if faded is not None:
            delta.removed = [int(c) for c in np.asarray(faded).tolist()]
        self.state = apply_topic_delta(self.state, delta, t, p)
        self.t = t
        return delta, emerged

    def _novel(self, candidates: list[tuple[int, Emergence]],
               centroids: Callable[[], tuple[np.ndarray, np.ndarray]] | None) -> list[Emergence]:
        """The candidates that are not facets of a story already announced: their centroid's
        cosine to every announced cluster's (and to the candidates kept before them, in
        stream order) is below ``novelty``."""
        if not candidates or centroids is None or self.params.novelty >= 1.0:
            return [e for _, e in candidates]
        ids, C = centroids()
        row = {int(c): i for i, c in enumerate(ids.tolist())}
        announced = [row[c] for c, card in self.state.cards.items() if card.alerted and c in row]
        kept: list[Emergence] = []
        for cid, e in sorted(candidates, key=lambda ce: ce[1].ts):
            i = row.get(cid)
            if i is not None and announced and \
                    float((C[announced] @ C[i]).max()) >= self.params.novelty:
                continue
            kept.append(e)
            if i is not None:
                announced.append(i)
        return kept

    def _crossing(self, card: TopicCard | None, ub: np.ndarray, first: np.ndarray,
                  counts: np.ndarray, rows: np.ndarray) -> tuple[int, float, float] | None:
        """Where a cluster's documents of this batch (``rows``, sorted by bucket) first bring
        its current bucket over the thresholds: (position in ``rows``, count, score)."""
        p = self.params
        if card is not None and card.alerted:
            return None
        sim = TopicCard() if card is None else TopicCard(bucket=card.bucket, n=card.n,
                                                         mean=card.mean, var=card.var)
        for b, start, c in zip(ub.tolist(), first.tolist(), counts.tolist(), strict=True):
            roll(sim, b, p.alpha)
            cum = sim.n + np.arange(1, c + 1, dtype=np.float64)
            score = emergence_score(cum, sim.mean, sim.var)
            ok = np.flatnonzero((cum >= p.min_count) & (score >= p.z_threshold))
            if ok.size:
                j = int(ok[0])
                return start + j, float(cum[j]), float(score[j])
            sim.n += c
        return None

    @staticmethod
    def _emergence(cid: int, card: TopicCard | None, d: CardDelta, hit: tuple[int, float, float],
                   ts: np.ndarray, rows: np.ndarray) -> Emergence:
        pos, count, score = hit
        row = int(rows[pos])
        size = (card.size if card else 0) + pos + 1
        born = min(card.born_ts, d.first_ts) if card else d.first_ts
        return Emergence(cid, row, score, count, card.mean if card else 0.0, size, born,
                         float(ts[row]))

    def keywords(self, cluster_ids: Iterable[int]) -> dict[int, list[str]]:
        """Keywords of the clusters named (those with a card), weighed against all clusters;
        every card is decayed to the clock of the all-clusters sketch first."""
        st = self.state
        cards = {}
        for c in set(map(int, cluster_ids)):
            card = st.cards.get(c)
            if card is not None:
                cards[c] = _decayed(card.terms, float(decay_factor(st.all_t - card.t,
                                                                   self.params.half_life)))
        return ctfidf_keywords(cards, st.all_terms, self.params.n_keywords, len(st.cards))

    def exemplars(self, cluster_id: int, n: int | None = None) -> list[str]:
        card = self.state.cards.get(int(cluster_id))
        if card is None:
            return []
        return [text for _, _, text in card.exemplars[: n or self.params.n_exemplars]]
