"""``bench quality --encoders`` and ``bench encoder --encoders``: one row per model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import documents
from stream.cli import main


def labelled(tmp_path: Path, n: int = 300) -> Path:
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in documents(n)))
    return path


def test_quality_rows_per_model_with_state_bytes(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = labelled(tmp_path)
    out = tmp_path / "rows.json"
    assert main(["bench", "quality", "--dataset", str(path), "--encoders", "hashing,hashing:256",
                 "--clusterers", "kmeans,denstream", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["clusterer"]) for r in rows] == [
        ("hashing", "kmeans"), ("hashing", "denstream"),
        ("hashing:256", "kmeans"), ("hashing:256", "denstream")]
    by = {(r["model"], r["clusterer"]): r for r in rows}
    # k-means keeps one Redis record per cluster: 5 float64 fields and the float32 sum
    assert by["hashing", "kmeans"]["state_bytes_per_cluster"] == 40 + 4 * 1024
    assert by["hashing:256", "kmeans"]["state_bytes_per_cluster"] == 40 + 4 * 256
    # DenStream keeps several micro-clusters per cluster
    assert by["hashing", "denstream"]["state_bytes_per_cluster"] >= 40 + 4 * 1024
    assert by["hashing", "kmeans"]["threshold"] == 0.15
    for r in rows:
        assert 0 < r["nmi"] <= 1 and r["encoder_docs_per_s"] > 0 and r["clusterer_docs_per_s"] > 0
    text = capsys.readouterr().out
    assert "B/cluster" in text and text.count("hashing:256") == 2


def test_encoder_speeds_per_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = labelled(tmp_path, 200)
    out = tmp_path / "speeds.json"
    assert main(["bench", "encoder", "--dataset", str(path), "--encoders", "hashing,hashing:128",
                 "--repeat", "1", "--batch-size", "50", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["hashing", "hashing:128"]
    assert [r["dim"] for r in rows] == [1024, 128]
    assert rows[0]["relative"] == 1.0 and all(r["docs_per_s"] > 0 for r in rows)
    assert rows[0]["documents"] == 200 and rows[0]["batch_size"] == 50
    capsys.readouterr()
    assert main(["bench", "quality", "--dataset", str(path), "--encoders", " , "]) == 2
    assert "names no encoder" in capsys.readouterr().err
