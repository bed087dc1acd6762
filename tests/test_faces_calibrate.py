"""`faces calibrate` stores a threshold with the model id that the face analyzer then uses (unless the config
sets one), and `faces identify` prints one JSON line per face. Real photos (../shared/data/faces: celeb5
people enrolled, fr_examples people as impostors), the real MTCNN + dlib ResNet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import pytest

import run_pipeline
from pipeline.analyze.faces.analyzer import FaceAccessAnalyzer
from pipeline.analyze.faces.enroll import FaceEngine, enroll_images
from pipeline.analyze.faces.gallery import Gallery
from pipeline.config.faces import FacesConfig

SHARED = Path(
    os.environ.get("VIDPIPE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
FACES = SHARED / "faces"
pytestmark = pytest.mark.skipif(not (FACES / "celeb5").is_dir(), reason="needs ../shared/data/faces")
PEOPLE = ["ben_afflek", "elton_john", "jerry_seinfeld", "madonna", "mindy_kaling"]


@pytest.fixture(scope="module")
def gallery_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cal") / "gallery.sqlite"
    cfg = FacesConfig(gallery_path=str(path))
    engine = FaceEngine.from_config(cfg)
    with Gallery(path) as g:
        for who in PEOPLE:
            photos = sorted((FACES / "celeb5" / "train" / who).glob("*.jpg"))[:6]
            rep = enroll_images(g, engine, cfg, who, [(p.name, cv2.imread(str(p))) for p in photos])
            assert len(rep.accepted) >= 3, rep.lines()
    return path


def _run(capsys, *argv: str) -> tuple[int, str]:
    rc = run_pipeline.main(["faces", *argv])
    return rc, capsys.readouterr().out


def test_calibrate_stores_a_threshold_the_analyzer_uses(gallery_path, capsys, caplog):
    rc, out = _run(capsys, "--gallery", str(gallery_path), "calibrate", "--dry-run")
    assert rc == 0 and "dry run" in out
    with Gallery(gallery_path) as g:
        model = FaceEngine.from_config(FacesConfig()).embedder.model_id
        assert g.calibration(model) is None
    rc, out = _run(
        capsys,
        "--gallery",
        str(gallery_path),
        "calibrate",
        "--impostors",
        str(FACES / "fr_examples" / "train"),
    )
    assert rc == 0, out
    rep = json.loads(out[: out.rindex("}") + 1])
    assert rep["impostor_sources"]["gallery_leave_one_identity_out"] >= 15
    assert rep["impostor_sources"]["impostor_photos"] >= 8
    assert rep["far"] <= 0.001 and rep["genuine_attempts"] >= 15
    assert "impostor attempts cannot show a FAR of 0.001" in out  # honest about the sample size
    with Gallery(gallery_path) as g:
        threshold, margin, stored = g.calibration(model)
    assert (
        0.3 <= threshold <= 0.8 and threshold == rep["threshold"] and json.loads(stored)["model_id"] == model
    )

    caplog.set_level("INFO", "pipeline.analyze.faces.analyzer")
    cfg = FacesConfig(enabled=True, gallery_path=str(gallery_path), unknown_crops={"enabled": False})
    an = FaceAccessAnalyzer(cfg, [], "cam1")
    assert an.matcher.threshold == threshold and "calibrated" in an.threshold_source
    an.close()
    assert f"threshold {threshold:.3f}" in caplog.text
    an = FaceAccessAnalyzer(cfg.model_copy(update={"threshold": 0.42}), [], "cam1")
    assert an.matcher.threshold == 0.42 and "config" in an.threshold_source  # the config overrides
    an.close()


def test_identify_prints_a_json_line_per_face(gallery_path, capsys, tmp_path):
    probes = sorted((FACES / "celeb5" / "val" / "madonna").glob("*.jpg"))
    stranger = FACES / "fr_examples" / "test" / "obama_and_biden.jpg"
    junk = tmp_path / "notes.txt"
    junk.write_text("not a photo")
    argv = [str(p) for p in probes] + [str(stranger), str(junk)]
    rc, out = _run(capsys, "--gallery", str(gallery_path), "identify", *argv)
    lines = [json.loads(x) for x in out.splitlines()]
    head, rows = lines[0], lines[1:]
    assert {"threshold", "margin", "source"} <= head.keys()
    by_photo: dict[str, list[dict]] = {}
    for r in rows:
        by_photo.setdefault(r["photo"], []).append(r)
    mine = [r for p in probes for r in by_photo[str(p)] if r["decision"] != "no face"]
    assert len(mine) >= len(probes) - 1 and all(r["nearest"] == "madonna" for r in mine)
    for r in mine:  # the decision follows the rule it printed
        accept = r["distance"] <= head["threshold"] and r["margin"] >= head["margin"]
        assert (r["name"] == "madonna") == accept and (r["reason"] is None) == accept
        assert r["decision"] == ("match" if accept else "unknown")
    assert any(r["name"] == "madonna" for r in mine)
    assert len(by_photo[str(stranger)]) >= 2  # two strangers (and whoever MTCNN finds behind), none enrolled
    assert all(
        r["name"] is None and r["decision"] == "unknown" and r["reason"] for r in by_photo[str(stranger)]
    )
    (bad,) = by_photo[str(junk)]
    assert bad["decision"] == "error" and "notes.txt" in bad["reason"]
    assert rc == 1  # one photo could not be read
