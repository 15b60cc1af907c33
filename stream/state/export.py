"""A model's whole state as one file: backup, migration between stores, seeding.

``topicstream state export PATH`` and ``topicstream state import PATH`` (see
:mod:`stream.cli`) move everything a worker needs to continue exactly between the in-memory
store (``--state-file``) and the Redis store (``--redis-url`` and ``--model``), either way.

File format (``topicstream-state``, version 1)
----------------------------------------------
One JSON object, written gzip-compressed when ``PATH`` ends in ``.gz`` and as plain JSON
otherwise (either is read whatever its name); no pickle, so reading a file never runs
code::

    {
      "format": "topicstream-state",
      "version": 1,
      "exported_at": "2026-11-23T19:50:40Z",
      "source": {"store": "redis", "model": "news"},       # or {"store": "memory", ...}
      "clusterer": {
        "dim": 1024, "n_docs": 300, "next_id": 17, "version": 5, "clusters": 12,
        "arrays": {
          "ids":       {"dtype": "<i8", "shape": [12],       "base64": "..."},
          "sums":      {"dtype": "<f4", "shape": [12, 1024], "base64": "..."},
          "weights":   {"dtype": "<f8", ...}, "counts":  {"dtype": "<i8", ...},
          "last_t":    {"dtype": "<f8", ...}, "created_t": {"dtype": "<f8", ...},
          "labels":    {"dtype": "<i8", ...}
        }
      },
      "topics": {"all": {"w": {...}, "t": 300.0}, "3": {"w": {...}, "x": [...], ...}},
      "offsets": [{"topic": "documents", "partition": 0, "offset": 1234}, ...],
      "river": null
    }

``clusterer`` is the :class:`~stream.clustering.base.ClusterState`: its numbers in plain
JSON, its arrays as the base64 of their little-endian bytes with their dtype and shape
(float arrays travel bit for bit). ``topics`` is :meth:`TopicState.to_json
<stream.topics.TopicState.to_json>`, the same JSON the Redis store keeps per card (keyword
sketches, exemplars, emerging-topic counters), or null. ``offsets`` are the committed next
offsets of every input partition. ``river`` is null, or the signed model of a river
clusterer (see below).

Reading checks everything before a store is touched: the format name and version, the
fields and their types, each array's dtype, shape and byte length, that ids are unique and
numbers finite; a truncated or edited file is refused with one line naming what is wrong.

Offsets
-------
Importing the offsets makes the restored environment resume the input where the export
was taken: its workers seek every partition to the offset stored with the state, so no
document is lost or counted twice between the two. ``offsets=False`` (``--no-offsets``)
leaves the target's stored offsets as they are (none in a fresh store: its workers start
at ``auto_offset_reset``), for seeding an environment that reads another topic, or the
same topic from elsewhere.

river models
------------
A ``river:NAME`` clusterer keeps its model as a pickle signed with HMAC-SHA256
(:mod:`stream.clustering.river_backend`), beside the in-memory store's snapshot
(``STATE_FILE.river``). It is exported as those signed bytes, unchanged, base64-encoded
(``{"format_tag": ..., "signed_base64": ...}``); nothing is unpickled on export or import.
Import writes it back beside the target's state file, checking the signature first when a
state key is configured (the worker checks it again when it loads the model). Such a model
lives in one process and cannot be imported into Redis: that is refused.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream.clustering.base import ClusterState
from stream.state import StateStore
from stream.topics import TopicState

log = logging.getLogger(__name__)

FORMAT = "topicstream-state"
VERSION = 1
# the ClusterState arrays, their dtype in the file, and whether they are (k, dim) or (k,)
ARRAYS: dict[str, tuple[str, bool]] = {
    "ids": ("<i8", False), "sums": ("<f4", True), "weights": ("<f8", False),
    "counts": ("<i8", False), "last_t": ("<f8", False), "created_t": ("<f8", False),
    "labels": ("<i8", False),
}
_GZIP_MAGIC = b"\x1f\x8b"


class ExportFormatError(ValueError):
    """A file that is not a readable ``topicstream-state`` export (reported in one line)."""


@dataclass
class StateExport:
    """Everything a worker needs to continue: what a ``topicstream-state`` file holds."""

    state: ClusterState
    topics: TopicState | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    river: bytes | None = None  # a river model's signed bytes (FORMAT_TAG, HMAC, pickle)
    source: dict[str, Any] = field(default_factory=dict)
    exported_at: str = ""


# -- stores ----------------------------------------------------------------------------------
def export_store(store: StateStore, *, river_file: Path | None = None,
                 source: dict[str, Any] | None = None) -> StateExport:
    """Read a model's state, topic state and offsets from ``store`` (consistently, see
    :meth:`~stream.state.StateStore.export_state`).

    Parameters
    ----------
    store
        The store to read.
    river_file
        Where a river clusterer's signed model lies beside the state (``STATE_FILE.river``);
        included when the file exists.
    source
        Where the state comes from, kept in the file for people (never a password).

    Raises
    ------
    ExportFormatError
        When the model has no state, or ``river_file`` is not a signed river model.
    """
    snap = store.export_state()
    if snap.state is None:
        raise ExportFormatError("the model has no state in the store: nothing to export")
    river = None
    if river_file is not None and river_file.exists():
        river = river_file.read_bytes()
        _check_river(river, str(river_file))
    return StateExport(snap.state, snap.topics, snap.offsets, river, dict(source or {}),
                       datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))


def import_store(store: StateStore, exp: StateExport, *, offsets: bool = True,
                 force: bool = False, river_file: Path | None = None,
                 state_key: bytes | None = None) -> None:
    """Write ``exp`` into ``store`` in one step (see
    :meth:`~stream.state.StateStore.import_state`).

    Parameters
    ----------
    store
        The target store.
    exp
        What to write (from :func:`read_export`).
    offsets
        Import the offsets (the target resumes the input where the export was taken);
        False leaves the target's stored offsets as they are.
    force
        Replace a model that already has state.
    river_file
        Where the target keeps a river model (``STATE_FILE.river``); None for a store that
        cannot hold one (Redis).
    state_key
        When given, a river model's signature is checked with it before it is written.

    Raises
    ------
    ExportFormatError
        When ``exp`` holds a river model and the target cannot take it, or its signature
        does not match ``state_key``.
    stream.state.StoreNotEmpty
        When the target already holds state and ``force`` is False.
    """
    if exp.river is not None:
        if river_file is None:
            raise ExportFormatError(
                "the file holds a river model (clusterer river:NAME), a single-worker backend "
                "whose model lives beside a state file and cannot be shared through Redis: "
                "import it with --state-file")
        if state_key is not None:
            from stream.clustering.river_backend import StateSignatureError, verify_signed

            try:
                verify_signed(exp.river, state_key)
            except StateSignatureError as exc:
                raise ExportFormatError(f"river model: {exc}") from exc
    store.import_state(exp.state, exp.topics, exp.offsets if offsets else None, force=force)
    if river_file is not None:
        if exp.river is not None:
            tmp = river_file.with_name(river_file.name + ".tmp")
            tmp.write_bytes(exp.river)
            os.replace(tmp, river_file)
        elif river_file.exists():  # it belonged to the model just replaced
            river_file.unlink()
            log.info("removed %s: the imported model has no river model", river_file)


# -- files -----------------------------------------------------------------------------------
def to_document(exp: StateExport) -> dict[str, Any]:
    """``exp`` as the JSON object of the file format (see the module docstring)."""
    s = exp.state
    arrays = {}
    for name, (dtype, _) in ARRAYS.items():
        a = np.ascontiguousarray(s.row_labels if name == "labels" else getattr(s, name),
                                 dtype=dtype)
        arrays[name] = {"dtype": dtype, "shape": list(a.shape),
                        "base64": base64.b64encode(a.tobytes()).decode("ascii")}
    offsets = []
    for key, value in sorted(exp.offsets.items()):
        topic, _, partition = key.rpartition(":")
        offsets.append({"topic": topic, "partition": int(partition), "offset": int(value)})
    river = None if exp.river is None else {
        "format_tag": exp.river.split(b"\n", 1)[0].decode("ascii", "replace"),
        "signed_base64": base64.b64encode(exp.river).decode("ascii")}
    return {
        "format": FORMAT, "version": VERSION, "exported_at": exp.exported_at,
        "source": exp.source,
        "clusterer": {"dim": int(s.dim), "n_docs": int(s.n_docs), "next_id": int(s.next_id),
                      "version": int(s.version), "clusters": len(s), "arrays": arrays},
        "topics": None if exp.topics is None else exp.topics.to_json(),
        "offsets": offsets,
        "river": river,
    }


def write_export(path: str | Path, exp: StateExport) -> int:
    """Write ``exp`` to ``path`` atomically (a temporary file, then a rename); gzip'd when
    the name ends in ``.gz``. Returns the bytes written."""
    path = Path(path)
    data = json.dumps(to_document(exp), ensure_ascii=False, indent=1).encode() + b"\n"
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def read_export(path: str | Path) -> StateExport:
    """Read and validate a file written by :func:`write_export` (gzip'd or not).

    Raises
    ------
    ExportFormatError
        When the file cannot be read, is not a ``topicstream-state`` export of a version
        this code reads, or any field, array shape or length is wrong (the message names
        the file and the first problem).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw.startswith(_GZIP_MAGIC):
            raw = gzip.decompress(raw)
        doc = json.loads(raw)
    except FileNotFoundError as exc:
        raise ExportFormatError(f"no such file: {path}") from exc
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise ExportFormatError(f"{path}: not a readable topicstream state export "
                                f"(truncated or not JSON: {exc})") from exc
    try:
        return from_document(doc)
    except ExportFormatError as exc:
        raise ExportFormatError(f"{path}: {exc}") from exc


def from_document(doc: Any) -> StateExport:
    """The :class:`StateExport` of a parsed file, after checking every field.

    Raises
    ------
    ExportFormatError
        On the first problem found.
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ExportFormatError(f"format={found!r} should be {FORMAT!r}: not a topicstream "
                                f"state export")
    version = doc.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ExportFormatError(f"version={version!r} is not supported (this topicstream reads "
                                f"version {VERSION})")
    cl = _field(doc, "clusterer", dict, "")
    dim = _count(cl, "dim", "clusterer.", minimum=1)
    k = _count(cl, "clusters", "clusterer.")
    arrays_in = _field(cl, "arrays", dict, "clusterer.")
    arrays = {name: _array(arrays_in, name, dtype, (k, dim) if wide else (k,))
              for name, (dtype, wide) in ARRAYS.items()}
    if len(np.unique(arrays["ids"])) != k:
        raise ExportFormatError("clusterer.arrays.ids holds repeated cluster ids")
    for name in ("sums", "weights", "last_t", "created_t"):
        if not np.isfinite(arrays[name]).all():
            raise ExportFormatError(f"clusterer.arrays.{name} holds non-finite numbers")
    state = ClusterState(dim=dim, n_docs=_count(cl, "n_docs", "clusterer."),
                         next_id=_count(cl, "next_id", "clusterer."),
                         version=_count(cl, "version", "clusterer."), **arrays)
    if k and state.next_id <= int(state.ids.max()):
        raise ExportFormatError(f"clusterer.next_id={state.next_id} should be above every "
                                f"cluster id (the largest is {int(state.ids.max())})")
    topics = None
    if doc.get("topics") is not None:
        t = _field(doc, "topics", dict, "")
        try:
            topics = TopicState.from_json(t)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ExportFormatError(f"topics: not a topic state ({type(exc).__name__}: "
                                    f"{exc})") from exc
    offsets: dict[str, int] = {}
    for i, item in enumerate(_field(doc, "offsets", list, "")):
        where = f"offsets[{i}]."
        if not isinstance(item, dict):
            raise ExportFormatError(f"offsets[{i}]={item!r} should be an object")
        topic = _field(item, "topic", str, where)
        if not topic:
            raise ExportFormatError(f"{where}topic should not be empty")
        key = f"{topic}:{_count(item, 'partition', where)}"
        if key in offsets:
            raise ExportFormatError(f"offsets: partition {key} appears twice")
        offsets[key] = _count(item, "offset", where)
    river = None
    if doc.get("river") is not None:
        r = _field(doc, "river", dict, "")
        river = _b64(_field(r, "signed_base64", str, "river."), "river.signed_base64")
        _check_river(river, "river.signed_base64")
    source: dict[str, Any] = doc["source"] if isinstance(doc.get("source"), dict) else {}
    exported_at = str(doc.get("exported_at") or "")
    return StateExport(state, topics, offsets, river, source, exported_at)


# -- checks ----------------------------------------------------------------------------------
def _field(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in obj:
        raise ExportFormatError(f"{where}{name} is missing")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ExportFormatError(f"{where}{name}={_short(value)} should be a {kind.__name__}")
    return value


def _count(obj: dict[str, Any], name: str, where: str, minimum: int = 0) -> int:
    value = _field(obj, name, int, where)
    if value < minimum:
        raise ExportFormatError(f"{where}{name}={value} should be >= {minimum}")
    return int(value)


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ExportFormatError(f"{where} is not valid base64 ({exc})") from exc


def _array(arrays: dict[str, Any], name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    where = f"clusterer.arrays.{name}"
    spec = _field(arrays, name, dict, "clusterer.arrays.")
    if spec.get("dtype") != dtype:
        raise ExportFormatError(f"{where}.dtype={_short(spec.get('dtype'))} should be {dtype!r}")
    if spec.get("shape") != list(shape):
        raise ExportFormatError(f"{where}.shape={_short(spec.get('shape'))} should be "
                                f"{list(shape)} (clusterer.clusters and clusterer.dim)")
    data = _b64(_field(spec, "base64", str, where + "."), where + ".base64")
    want = math.prod(shape) * np.dtype(dtype).itemsize
    if len(data) != want:
        raise ExportFormatError(f"{where} holds {len(data)} bytes; shape {list(shape)} of "
                                f"{dtype} needs {want}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))


def _check_river(data: bytes, where: str) -> None:
    from stream.clustering.river_backend import StateSignatureError, check_signed_layout

    try:
        check_signed_layout(data)
    except StateSignatureError as exc:
        raise ExportFormatError(f"{where}: {exc}") from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
