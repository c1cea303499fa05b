from __future__ import annotations

import os

import pytest

from edgeslim.engine.store import (
    atomic_write_bytes,
    commit_dir,
    fresh_temp_dir,
    hash_tree,
    manifest_is_valid,
    write_json,
)


def test_atomic_write_leaves_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old")

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_commit_replaces_a_previous_result(tmp_path):
    final = tmp_path / "03-finetune"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = fresh_temp_dir(final)
    (tmp / "new.txt").write_text("new")
    commit_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["03-finetune"]


def test_manifest_checks_key_and_file_hashes(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"weights")
    write_json(tmp_path / "manifest.json", {"cache_key": "k1", "files": hash_tree(tmp_path)})
    assert manifest_is_valid(tmp_path, "k1")
    assert not manifest_is_valid(tmp_path, "k2")  # different inputs or settings
    (tmp_path / "model.onnx").write_bytes(b"weightz")
    assert not manifest_is_valid(tmp_path, "k1")  # file changed on disk
    (tmp_path / "manifest.json").write_text("{not json")
    assert not manifest_is_valid(tmp_path, "k1")
