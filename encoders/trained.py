"""What the models trained by ``topicstream train`` share: their directory's ``config.json``
(format, version and kind checked), their ``model.safetensors`` (loaded into a freshly built
network, every tensor's shape checked, never unpickled), and the rule that gives a new
model its similarity threshold.

Used by :mod:`encoders.distilled` (students) and :mod:`encoders.reducer` (compressors).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def read_config(path: Path, fmt: str, version: int, kinds: Sequence[str], what: str) -> dict[str, Any]:
    """``path/config.json`` as a dict whose ``format``, ``version`` and ``kind`` are checked.

    ``what`` names the directory in messages (``"a distilled encoder is a directory written
    by 'topicstream train'"``). Raises ``FileNotFoundError`` for a missing directory or file,
    ``ValueError`` (naming the file and the bad value) for the rest.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory ({what})")
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing ({what})")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_file}: not JSON ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        got = cfg.get("format") if isinstance(cfg, dict) else cfg
        raise ValueError(f"{cfg_file}: format={got!r}, expected {fmt!r}")
    if cfg.get("version") != version:
        raise ValueError(f"{cfg_file}: version={cfg.get('version')!r}, this topicstream reads "
                         f"version {version}")
    if cfg.get("kind") not in kinds:
        raise ValueError(f"{cfg_file}: kind={cfg.get('kind')!r} should be one of "
                         f"{', '.join(kinds)}")
    return cfg


def load_weights(model: Any, path: Path, described: str, train_hint: str) -> None:
    """Load ``path/model.safetensors`` into ``model`` (float32, eval mode).

    ``described`` says what the config asked for (``"kind='ae', in_dim=384"``), quoted when
    the tensors do not match; ``train_hint`` is the command that makes the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wfile = path / WEIGHTS
    if not wfile.is_file():
        raise FileNotFoundError(f"{wfile}: missing (train one with '{train_hint}')")
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{wfile}: not a readable safetensors file ({exc})") from exc
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))
        raise ValueError(f"{wfile}: tensors do not match {CONFIG} ({described}): expected "
                         f"{expected}, differences {diff}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()


def matched_threshold(teacher: np.ndarray, student: np.ndarray,
                      teacher_threshold: float) -> float:
    """The new model's cosine at the quantile where the teacher's threshold sits.

    ``teacher`` and ``student`` are unit rows of the same texts in the same order (a sample
    of the training texts; never labelled data). ``q`` is the share of text pairs whose
    teacher cosine is below ``teacher_threshold``; the result is the ``q``-quantile of the
    student's cosines of the same pairs, so a model that packs texts closer together gets a
    correspondingly higher threshold.
    """
    if len(teacher) < 2:
        return teacher_threshold
    iu = np.triu_indices(len(teacher), k=1)
    t = (teacher @ teacher.T)[iu]
    s = (student @ student.T)[iu]
    q = float(np.mean(t < teacher_threshold))
    return round(float(np.quantile(s, q)), 4)


__all__ = ["CONFIG", "WEIGHTS", "load_weights", "matched_threshold", "read_config"]
