"""Enrollment against bad input and identity merging: names, huge or endless files, one bad photo among
good ones, an existing name without --append. Real photos (scikit-image ships them), the real CLI, the real
gallery and audit log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.analyze.doors.audit import AuditLog, verify_log
from pipeline.analyze.faces.enroll import decode_image, enroll_images, read_photo
from pipeline.analyze.faces.gallery import Gallery, GalleryError, check_name, display_name
from pipeline.config.faces import FacesConfig
from pipeline.ingest.demo_media import write_png_bomb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    return write_png_bomb(tmp_path_factory.mktemp("png") / "huge.png")


@pytest.fixture(scope="module")
def face_photos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("faces")
    ast = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(d / "eileen.jpg"), ast)
    cv2.imwrite(str(d / "eileen_flip.jpg"), cv2.flip(ast, 1))
    cam = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(d / "stranger.jpg"), cv2.resize(cam, (1024, 1024), interpolation=cv2.INTER_CUBIC))
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is a text file, not a photo\n")
    return {p.stem: p for p in d.iterdir()}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "--gallery", "g.sqlite", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_name_rules():
    for ok in ("Zoë O'Neil-2", "a", "x" * 64, "  padded  "):
        assert check_name(ok) == ok.strip()
    for bad, why in [
        ("", "characters"),
        ("   ", "characters"),
        ("x" * 65, "65 characters"),
        ("ev\x00il", "control characters"),
        ("\x1b[2J\x1b[31mroot", "control characters"),
        ("two\nlines", "control characters"),
        ("tab\there", "control characters"),
        ("a/b", "path separators"),
        ("a\\b", "path separators"),
        ("..", "path separators"),
    ]:
        with pytest.raises(GalleryError, match=why):
            check_name(bad)
    assert display_name("\x1b[31mred\x00") == "\\x1b[31mred\\x00"


def test_list_never_prints_raw_control_characters(tmp_path):
    """A name stored before the rules existed (or written straight into SQLite) is escaped on output."""
    with Gallery(tmp_path / "g.sqlite") as g:
        g._db.execute("INSERT INTO persons(name, created) VALUES (?, 0)", ("\x1b]0;pwned\x07evil\x00",))
    r = cli("list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not any(c in r.stdout for c in "\x1b\x07\x00")
    assert "\\x1b]0;pwned\\x07evil\\x00" in r.stdout


def test_existing_name_needs_append_which_is_audited(tmp_path, face_photos):
    env = {**os.environ, "VIDPIPE_AUDIT_KEY": "enroll-audit-key-0123456789"}
    r = cli("enroll", "--name", "eileen", str(face_photos["eileen"]), cwd=tmp_path, env=env)
    assert r.returncode == 0 and "eileen.jpg: enrolled" in r.stdout, r.stdout + r.stderr

    # the attack: a stranger enrolled under an existing name would be that person from now on
    r = cli("enroll", "--name", "eileen", str(face_photos["stranger"]), cwd=tmp_path, env=env)
    assert r.returncode == 2 and "'eileen' is already enrolled" in r.stderr and "--append" in r.stderr
    # --append without an audit key is refused too
    no_key = {k: v for k, v in env.items() if not k.startswith("VIDPIPE_AUDIT_KEY")}
    r = cli(
        "enroll", "--append", "--name", "eileen", str(face_photos["eileen_flip"]), cwd=tmp_path, env=no_key
    )
    assert r.returncode == 2 and "must be audited" in r.stderr
    assert "eileen\t1 template(s)" in cli("list", cwd=tmp_path).stdout  # nothing changed

    r = cli("enroll", "--append", "--name", "eileen", str(face_photos["eileen_flip"]), cwd=tmp_path, env=env)
    assert r.returncode == 0 and "eileen: 1 of 1 photo(s) enrolled, 2 template(s)" in r.stdout, r.stdout
    log = tmp_path / "g.sqlite.audit.jsonl"
    ok, n, _, problem = verify_log(log, env["VIDPIPE_AUDIT_KEY"].encode())
    assert ok and n == 2, problem
    records = [json.loads(line)["record"] for line in log.read_text().splitlines()]
    assert [(x["action"], x["name"], x["templates"]) for x in records] == [
        ("enroll", "eileen", 1),
        ("append", "eileen", 2),
    ]
    assert records[1]["photos"] == [str(face_photos["eileen_flip"])]


def test_each_photo_gets_its_own_result(tmp_path, face_photos, huge_png):
    photos = [
        str(face_photos["empty"]),
        str(face_photos["notes"]),
        "/dev/zero",
        str(huge_png),
        str(tmp_path / "missing.jpg"),
        str(face_photos["eileen"]),
        str(face_photos["stranger"]),  # a real face of another person: enrolled too (one person each)
    ]
    r = cli("enroll", "--name", "eileen", *photos, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[:-1] == [
        f"{face_photos['empty']}: rejected: empty file",
        f"{face_photos['notes']}: rejected: not a readable image (JPEG/PNG/BMP/WebP expected)",
        "/dev/zero: rejected: not a regular file",
        f"{huge_png}: rejected: the header's size = 400 MP, more than faces.max_photo_pixels (40 MP)",
        f"{tmp_path / 'missing.jpg'}: rejected: cannot read (No such file or directory)",
        f"{face_photos['eileen']}: enrolled",
        f"{face_photos['stranger']}: enrolled",
    ]
    assert lines[-1] == "eileen: 2 of 7 photo(s) enrolled, 2 template(s) in total"


def test_huge_png_and_dev_zero_fail_fast_in_bounded_memory(tmp_path, huge_png):
    """The done-when bound (under 1 GB, under 2 s) measured on the real CLI process. Only bad files: the
    models are never loaded."""
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "--gallery", "g.sqlite", "enroll",
           "--name", "x", str(huge_png), "/dev/zero"]  # fmt: skip
    # The CLI is started by a small wrapper interpreter that reports its child's rusage: a child forked
    # straight from this pytest process would count the parent's pages (models loaded by earlier tests)
    # in its ru_maxrss until it execs.
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t0 = time.monotonic()\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
        "out, err = p.communicate()\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': p.returncode, 'out': out, 'wall': time.monotonic() - t0,"
        " 'maxrss_kb': r.ru_maxrss}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=tmp_path, capture_output=True, text=True)
    report = json.loads(proc.stdout)
    out, wall, peak_mb = report["out"], report["wall"], report["maxrss_kb"] / 1024
    assert report["rc"] == 1 and "400 MP" in out and "not a regular file" in out, out
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    print(f"enroll huge.png /dev/zero: {wall:.2f} s wall, peak RSS {peak_mb:.0f} MB")
    assert "0 person(s)" in cli("list", cwd=tmp_path).stdout


def test_size_limits_in_process(tmp_path, huge_png):
    with pytest.raises(ValueError, match="400 MP, more than faces.max_photo_pixels"):
        decode_image(huge_png.read_bytes(), "huge.png")
    medium = write_png_bomb(tmp_path / "medium.png", side=8000)  # under Pillow's own bomb limit
    with pytest.raises(ValueError, match="8000x8000 = 64 MP, more than faces.max_photo_pixels"):
        decode_image(medium.read_bytes(), "medium.png")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 5000)
    with pytest.raises(ValueError, match="5000 bytes, more than faces.max_photo_bytes \\(4096\\)"):
        read_photo(big, max_bytes=4096)
    with pytest.raises(ValueError, match="not a regular file"):
        read_photo(tmp_path)


class _FailingAudit(AuditLog):
    def append(self, record: dict) -> str:
        raise OSError("disk full")


def test_nothing_enrolled_is_lost_on_any_error(tmp_path, face_photos):
    """A failure at the last moment (the audit entry cannot be written, inside the gallery transaction)
    leaves the person exactly as before; so do the refused requests."""
    from pipeline.analyze.faces.enroll import FaceEngine

    cfg = FacesConfig(gallery_path=str(tmp_path / "g.sqlite"))
    engine = FaceEngine.from_config(cfg)
    photo = [("eileen.jpg", face_photos["eileen"])]
    with Gallery(cfg.gallery_path) as g:
        enroll_images(g, engine, cfg, "eileen", photo)
        before = g.templates(engine.model_id)["eileen"].copy()
        broken = _FailingAudit(tmp_path / "a.jsonl", b"k" * 32)
        with pytest.raises(OSError, match="disk full"):
            enroll_images(g, engine, cfg, "eileen", photo, append=True, audit=broken)
        with pytest.raises(GalleryError, match="already enrolled"):
            enroll_images(g, engine, cfg, "eileen", photo)
        with pytest.raises(GalleryError, match="invalid person name"):
            enroll_images(g, engine, cfg, "eil\x1been", photo)
        rep = enroll_images(g, engine, cfg, "eileen", [("x", b"")], append=True)  # only bad photos
        assert rep.templates == 0 and rep.results[0].reason == "empty file"
        assert [(p.name, p.templates) for p in g.persons()] == [("eileen", 1)]
        assert np.array_equal(g.templates(engine.model_id)["eileen"], before)
