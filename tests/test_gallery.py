"""Face gallery (SQLite), matcher, enrollment quality checks, the faces CLI and the gallery HTTP API.

Real models (MTCNN + dlib ResNet from the model store) and real photos: skimage's astronaut (Eileen
Collins) and cameraman (another real person).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.analyze.faces.analyzer import DEFAULT_THRESHOLD
from pipeline.analyze.faces.enroll import FaceEngine, enroll_images
from pipeline.analyze.faces.gallery import Gallery, GalleryError
from pipeline.analyze.faces.matcher import Matcher
from pipeline.config.faces import FacesConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine() -> FaceEngine:
    return FaceEngine.from_config(FacesConfig())


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    ast = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    cam = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    return {
        "astronaut": ast,
        "astronaut_flip": cv2.flip(ast, 1),
        "cameraman": cv2.resize(cam, (1024, 1024), interpolation=cv2.INTER_CUBIC),  # face ~110 px
        "coffee": cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR),
        "blurry": cv2.GaussianBlur(ast, (0, 0), 6),
        "tiny": cv2.resize(ast, (128, 128), interpolation=cv2.INTER_AREA),
        "two_people": np.hstack([ast, cv2.resize(cam, (512, 512))]),
    }


def test_gallery_crud_and_persistence(tmp_path):
    path = tmp_path / "g.sqlite"
    rng = np.random.default_rng(0)
    with Gallery(path) as g:
        assert g.enroll("alice", rng.normal(size=(2, 128)), ["a1.jpg", "a2.jpg"], "m1") == 2
        with pytest.raises(GalleryError, match="already enrolled"):  # merging two people needs append
            g.enroll("alice", rng.normal(size=(1, 128)), ["a3.jpg"], "m1")
        assert g.enroll("alice", rng.normal(size=(1, 128)), ["a3.jpg"], "m1", append=True) == 3
        g.enroll("bob", rng.normal(size=(1, 128)), ["b.jpg"], "m2")
        with pytest.raises(GalleryError, match="already enrolled"):
            g.rename("alice", "bob")
        g.rename("alice", "alice2")
        with pytest.raises(GalleryError, match="no enrolled person named 'zed'"):
            g.remove("zed")
        with pytest.raises(GalleryError, match="invalid person name"):
            g.enroll("a/b", rng.normal(size=(1, 128)), ["x"], "m1")
        with pytest.raises(GalleryError, match="NaN"):
            g.enroll("nan", np.full((1, 128), np.nan), ["x"], "m1")
        v = g.version()
    with Gallery(path) as g:  # everything committed survives reopening
        assert g.version() == v
        assert [(p.name, p.templates, p.model_ids) for p in g.persons()] == [
            ("alice2", 3, ("m1",)),
            ("bob", 1, ("m2",)),
        ]
        assert set(g.templates("m1")) == {"alice2"}  # other models' templates are never mixed in
        assert g.templates("m1")["alice2"].shape == (3, 128)
        g.remove("bob")
        assert g.templates("m2") == {} and g.version() != v


def test_failed_enrollment_leaves_nothing_behind(tmp_path):
    with Gallery(tmp_path / "g.sqlite") as g:
        with pytest.raises(Exception):  # noqa: B017 - a bad row aborts the whole transaction
            g.enroll("carol", np.zeros((2, 128)), ["ok.jpg", None], "m1")  # type: ignore[list-item]
        assert g.persons() == []


def test_matcher_uses_mean_distance_and_threshold():
    t = {"a": np.array([[0.0, 0.0], [1.0, 0.0]]), "b": np.array([[0.2, 0.0]])}
    m = Matcher(t, threshold=0.5)
    # nearest single template is a's (0,0) at 0.1, but the mean over a's templates is 0.5 > b's 0.1
    r = m.identify(np.array([0.1, 0.0]))
    assert (r.identity, round(r.distance, 3)) == ("b", 0.1)
    far = m.identify(np.array([5.0, 5.0]))
    assert far.identity is None and far.nearest in {"a", "b"} and far.distance > 0.5
    assert Matcher({}, 0.5).identify(np.zeros(2)).identity is None


def test_enrollment_rejects_bad_photos_by_name(tmp_path, engine, photos):
    cfg = FacesConfig()
    images = [(f"{k}.jpg", v) for k, v in photos.items() if k != "cameraman"] + [
        ("junk.jpg", b"not an image")
    ]
    with Gallery(tmp_path / "g.sqlite") as g:
        rep = enroll_images(g, engine, cfg, "eileen", images)
        rejected = dict(rep.rejected)
        assert rep.accepted == ["astronaut.jpg", "astronaut_flip.jpg"] and rep.templates == 2
        assert rejected["coffee.jpg"] == "no face found"
        assert "too blurry" in rejected["blurry.jpg"]
        assert "too small" in rejected["tiny.jpg"]
        assert rejected["two_people.jpg"].startswith("2 faces found")
        assert "not a readable image" in rejected["junk.jpg"]
        # the enrolled person is recognised in the other real photo only
        m = Matcher(g.templates(engine.model_id), DEFAULT_THRESHOLD)
    cam = photos["cameraman"]
    dets = engine.detect(cam)
    assert len(dets) == 1
    r = m.identify(engine.embed(cam, dets)[0])
    assert r.identity is None and r.nearest == "eileen" and r.distance > DEFAULT_THRESHOLD


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "--gallery", "g.sqlite", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_enroll_list_rename_remove(tmp_path, photos):
    cv2.imwrite(str(tmp_path / "eileen.jpg"), photos["astronaut"])
    cv2.imwrite(str(tmp_path / "coffee.jpg"), photos["coffee"])
    r = _cli("enroll", "--name", "eileen", "eileen.jpg", "coffee.jpg", "missing.jpg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "eileen.jpg: enrolled" in r.stdout
    assert "coffee.jpg: rejected: no face found" in r.stdout
    assert "missing.jpg: rejected: cannot read" in r.stdout
    assert _cli("rename", "eileen", "collins", cwd=tmp_path).returncode == 0
    out = _cli("list", cwd=tmp_path).stdout
    assert "collins\t1 template(s)" in out and "1 person(s)" in out
    bad = _cli("remove", "nobody", cwd=tmp_path)
    assert bad.returncode == 2 and "no enrolled person named 'nobody'" in bad.stderr
    assert _cli("remove", "collins", cwd=tmp_path).returncode == 0
    assert "0 person(s)" in _cli("list", cwd=tmp_path).stdout


def test_http_api_requires_token_and_manages_gallery(tmp_path, engine, photos, start_web):
    """The gallery API, now served by the web app under /api (faces-only, as `faces serve` runs it)."""
    from tests.support.web_fixtures import TOKEN

    token = TOKEN
    cfg = FacesConfig(gallery_path=str(tmp_path / "g.sqlite"))
    gallery = Gallery(cfg.gallery_path)
    server = start_web(faces=cfg)
    server.server.ctx._engine = engine  # the module's engine: the models load once per test module

    def call(method: str, path: str, body: dict | None = None, tok: str | None = token) -> tuple[int, dict]:
        req = urllib.request.Request(
            server.url + "/api" + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
        )
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        jpg = base64.b64encode(cv2.imencode(".jpg", photos["astronaut"])[1].tobytes()).decode()
        png = base64.b64encode(cv2.imencode(".png", photos["coffee"])[1].tobytes()).decode()
        assert call("GET", "/persons", tok=None)[0] == 401
        assert call("GET", "/persons", tok="wrong-token-wrong-token")[0] == 401
        assert call("POST", "/persons", {"name": "x", "photos": [{"data": jpg}]}, tok=None)[0] == 401
        assert gallery.persons() == []
        status, body = call(
            "POST",
            "/persons",
            {
                "name": "eileen",
                "photos": [
                    {"filename": "a.jpg", "data": jpg},
                    {"filename": "c.png", "data": png},
                    {"filename": "z", "data": "@@"},
                ],
            },
        )
        assert status == 200 and body["enrolled"] == ["a.jpg"] and body["templates"] == 1
        assert {r["photo"]: r["reason"] for r in body["rejected"]} == {
            "z": "data is missing or not valid base64",
            "c.png": "no face found",
        }
        again = {"name": "eileen", "photos": [{"filename": "b.jpg", "data": jpg}]}
        status, body = call("POST", "/persons", again)
        assert status == 400 and "already enrolled" in body["error"]  # adding to a person needs append
        assert call("POST", "/persons", {**again, "append": "yes"})[0] == 400
        status, body = call("POST", "/persons", {**again, "append": True})
        assert status == 200 and body["templates"] == 2 and body["results"][0]["enrolled"]
        assert call("PATCH", "/persons/eileen", {"name": "collins"})[0] == 200
        status, body = call("GET", "/persons")
        assert status == 200 and [p["name"] for p in body["persons"]] == ["collins"]
        assert call("DELETE", "/persons/nobody")[0] == 404
        assert call("POST", "/persons", {"name": "x"})[0] == 400
        assert call("DELETE", "/persons/collins") == (200, {"removed": "collins"})
        assert gallery.persons() == []
    finally:
        gallery.close()
        gallery.close()


def test_enrollment_survives_a_crash(tmp_path):
    """A process killed right after enrolling (no close, no clean exit) loses nothing it reported."""
    code = (
        "import os, numpy as np\n"
        "from pipeline.analyze.faces.gallery import Gallery\n"
        f"g = Gallery({str(tmp_path / 'g.sqlite')!r})\n"
        "g.enroll('dora', np.ones((2, 128), np.float32), ['a', 'b'], 'm1')\n"
        "print('enrolled', flush=True)\n"
        "os._exit(9)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 9 and "enrolled" in r.stdout, r.stderr
    with Gallery(tmp_path / "g.sqlite") as g:
        assert g.templates("m1")["dora"].shape == (2, 128)


def test_faces_serve_keeps_the_var_dir_given_before_it():
    # `faces --var-dir D serve` must use D (the gallery is resolved against it), not serve's default
    import argparse

    from pipeline.cli import faces

    p = argparse.ArgumentParser()
    faces.add_arguments(p)
    assert p.parse_args(["--var-dir", "/srv/vidpipe", "serve"]).var_dir == "/srv/vidpipe"
    assert p.parse_args(["serve", "--var-dir", "/srv/other"]).var_dir == "/srv/other"
    assert p.parse_args(["serve"]).var_dir == "var"


def test_faces_cli_resolves_every_faces_path_under_var_dir(monkeypatch, tmp_path):
    # `faces enroll --var-dir D` must write the enrollment audit where a run with D does (one chain)
    import argparse
    from types import SimpleNamespace

    from pipeline.cli import faces

    cfg = FacesConfig(enroll_audit_log="var/enroll_audit.jsonl", unknown_crops={"dir": "var/crops"})
    monkeypatch.setattr(faces, "load_config", lambda path: SimpleNamespace(faces=cfg))
    args = argparse.Namespace(config="x.yaml", gallery=None, var_dir=str(tmp_path))
    out = faces._faces_config(args)
    assert out.gallery_path == str(tmp_path / "faces.sqlite")
    assert out.enroll_audit_log == str(tmp_path / "enroll_audit.jsonl")
    assert out.unknown_crops.dir == str(tmp_path / "crops")
