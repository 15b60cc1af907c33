"""Topic keywords: tokenisation and class-based TF-IDF (each cluster's terms against all)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

_TOKEN = re.compile(r"[^\W\d_][^\W_]*(?:['’][^\W_]+)?", re.UNICODE)

STOP_WORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "says", "said", "say", "new", "after", "amid", "over", "amid", "its", "it's", "per", "via", "us", "mr", "ms", "one", "two", "three", "first", "last", "year", "years", "week", "weeks", "day", "days", "says", "could", "would", "may", "might", "must", "shall"])


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stop words or one-letter tokens."""
    return [t for t in _TOKEN.findall(text.lower()) if len(t) > 1 and t not in STOP_WORDS]


def ctfidf_keywords(term_counts: Mapping[int, Counter[str]], top_n: int = 8) -> dict[int, list[str]]:
    """Class-based TF-IDF (Grootendorst, BERTopic 2022): a term's weight in a cluster is its
    frequency there times ``log(1 + A / f)``, with ``A`` the mean number of terms per cluster
    and ``f`` the term's frequency over all clusters."""
    if not term_counts:
        return {}
    total: Counter[str] = Counter()
    for counts in term_counts.values():
        total.update(counts)
    avg = sum(total.values()) / max(len(term_counts), 1)
    out: dict[int, list[str]] = {}
    for cid, counts in term_counts.items():
        if not counts:
            out[cid] = []
            continue
        terms = list(counts)
        tf = np.fromiter((counts[t] for t in terms), np.float64, len(terms))
        idf = np.log1p(avg / np.fromiter((total[t] for t in terms), np.float64, len(terms)))
        top = np.argsort(-(tf * idf), kind="stable")[:top_n]
        out[cid] = [terms[i] for i in top]
    return out


def keywords_from_assignments(pairs: Iterable[tuple[int, str]], top_n: int = 8) -> dict[int, list[str]]:
    """Keywords per cluster from (cluster id, text) pairs."""
    counts: dict[int, Counter[str]] = {}
    for cid, text in pairs:
        counts.setdefault(cid, Counter()).update(tokenize(text))
    return ctfidf_keywords(counts, top_n)
