"""dlib ResNet port (pipeline/models/dlib_resnet.py), 5-point alignment and FaceEmbedder, checked against dlib.

Real weights (model store: dlib-face-resnet), real photos (skimage's astronaut, cat, coffee) and dlib itself
(dlib-bin) as the reference: same chip in, same 128 numbers out.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

dlib = pytest.importorskip("dlib")  # dlib-bin is a dev dependency; the reference for every check here

from skimage import data, transform  # noqa: E402

from engines.model_store import get_model_files  # noqa: E402
from pipeline.analyze.faces.embedder import FaceEmbedder  # noqa: E402
from pipeline.models import align  # noqa: E402
from pipeline.models.dlib_resnet import DlibFaceResNet, DlibModelError, read_dlib_net  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def files():
    return get_model_files("dlib-face-resnet")


@pytest.fixture(scope="module")
def ref(files):
    """dlib's detector, 5-point predictor and recognition net."""
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(files["landmarks5"])),
        dlib.face_recognition_model_v1(str(files["embedding"])),
    )


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img if img.dtype == np.uint8 else (img * 255).round().astype(np.uint8))


def _astronaut_variants() -> dict[str, np.ndarray]:
    a = data.astronaut()
    return {
        "astronaut": a,
        "flipped": np.ascontiguousarray(a[:, ::-1]),
        "rot+17": _rgb(transform.rotate(a, 17, mode="edge")),
        "rot-23": _rgb(transform.rotate(a, -23, mode="edge")),
        "x0.6": _rgb(transform.rescale(a, 0.6, channel_axis=2)),
        "x3": _rgb(transform.rescale(a, 3, channel_axis=2, order=1)),
        "darker": (a * 0.55).astype(np.uint8),
    }


@pytest.fixture(scope="module")
def faces(ref):
    """name -> (RGB image, dlib full_object_detection, 5 points (5, 2), dlib's chip)."""
    det, sp, _ = ref
    out = {}
    for name, img in _astronaut_variants().items():
        rects = sorted(det(img, 1), key=lambda r: -r.area())
        assert rects, f"dlib found no face in astronaut variant {name}"
        shape = sp(img, rects[0])
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        out[name] = (img, shape, pts, dlib.get_face_chip(img, shape, size=150, padding=0.25))
    return out


@pytest.fixture(scope="module")
def embedders():
    return {b: FaceEmbedder(backend=b) for b in ("torch", "onnxruntime")}


# ---- the .dat parser ------------------------------------------------------------------------------------


def test_parser_reads_dlib_architecture(files):
    net = read_dlib_net(files["embedding"])
    assert net.loss == "loss_metric_2"
    assert net.input_size == (150, 150)
    np.testing.assert_allclose(net.input_mean, (122.782, 117.001, 104.298), atol=1e-3)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29  # stem + 14 blocks x 2
    assert kinds.count("add_prev") == 14
    assert net.layers[-1].kind == "fc" and net.layers[-1].params["weight"].shape == (256, 128)
    stem = net.layers[0].params
    assert stem["weight"].shape == (32, 3, 7, 7) and stem["stride"] == (2, 2) and stem["padding"] == (0, 0)
    model = DlibFaceResNet(net)
    assert len(model.blocks) == 14
    assert sum(b.shortcut_pool.__class__.__name__ == "AvgPool2d" for b in model.blocks) == 4


def test_parser_rejects_bad_files(tmp_path, files):
    raw = files["embedding"].read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DlibModelError, match="truncated.dat"):
        read_dlib_net(truncated)
    junk = tmp_path / "junk.dat"
    junk.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DlibModelError, match="junk.dat"):
        read_dlib_net(junk)
    with pytest.raises(DlibModelError, match="loss"):  # a dlib file, but the shape predictor, not a dnn
        read_dlib_net(files["landmarks5"])
    with pytest.raises(DlibModelError, match="not found"):
        read_dlib_net(tmp_path / "missing.dat")
    trailing = tmp_path / "trailing.dat"
    trailing.write_bytes(raw + b"\x00\x01")
    with pytest.raises(DlibModelError, match="left over"):
        read_dlib_net(trailing)


# ---- embedding parity ------------------------------------------------------------------------------------


def _other_chips() -> list[np.ndarray]:
    """Real photos that are not faces: the net must still agree with dlib on them."""
    return [
        cv2.resize(data.chelsea(), (150, 150), interpolation=cv2.INTER_AREA),
        np.ascontiguousarray(data.coffee()[100:250, 200:350]),
    ]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_embedding_matches_dlib(backend, faces, ref, embedders):
    _, _, fr = ref
    chips = np.stack([f[3] for f in faces.values()] + _other_chips())
    expected = np.stack([np.array(fr.compute_face_descriptor(c), np.float32) for c in chips])
    got = embedders[backend].embed_chips(chips)  # one batch of 9
    assert got.shape == (len(chips), 128) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4
    one = embedders[backend].embed_chips(chips[:1])  # batch of 1 gives the same numbers
    assert np.abs(one[0] - expected[0]).max() < 1e-4
    # and the numbers mean something: the astronaut variants are one person, the cat is not
    faces_n = len(faces)
    d_same = FaceEmbedder.distance(got[:faces_n], got[0])
    assert d_same.max() < 0.6
    assert FaceEmbedder.distance(got[faces_n], got[0]) > 0.6


def test_small_max_batch_splits_but_agrees(embedders, faces):
    chips = np.stack([f[3] for f in faces.values()])
    small = FaceEmbedder(backend="torch", max_batch=3)
    np.testing.assert_allclose(small.embed_chips(chips), embedders["torch"].embed_chips(chips), atol=1e-5)


# ---- alignment -------------------------------------------------------------------------------------------


def test_transform_maps_landmarks_to_template():
    rng = np.random.default_rng(0)
    for template in ("dlib5", "mtcnn"):
        tpl_px = (align.TEMPLATES[template] + 0.25) / 1.5 * 150
        for _ in range(5):
            ang, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 4.0)
            # dlib's chip: its corner pixels sit on the corners of a (150 * scale - 1) px square in the image
            expected = (tpl_px - 75.0) * (149.0 * scale / (150.0 * scale - 1.0)) + 74.5
            rot = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            pts = tpl_px @ rot.T + rng.uniform(-200, 800, 2)
            m = align.chip_to_image(pts, template)
            mapped = align.transform_points(align.invert_affine(m), pts)
            np.testing.assert_allclose(mapped, expected, atol=1e-6)


def test_real_landmarks_land_near_template(faces):
    tpl_px = (align.DLIB5_TEMPLATE + 0.25) / 1.5 * 150
    for name, (_, _, pts, _) in faces.items():
        if name == "flipped":
            continue  # mirror image: dlib's predictor swaps which eye is "right"
        mapped = align.transform_points(align.invert_affine(align.chip_to_image(pts, "dlib5")), pts)
        err = np.linalg.norm(mapped - tpl_px, axis=1)
        assert err.mean() < 4.0, f"{name}: landmarks {err.mean():.1f} px from the template on average"


def test_chip_reproduces_dlib_chip(faces, ref, embedders):
    _, _, fr = ref
    for name, (img, _, pts, dlib_chip) in faces.items():
        ours = align.align_faces(img, pts[None], template="dlib5")[0]
        diff = np.abs(ours.astype(np.int16) - dlib_chip.astype(np.int16))
        assert diff.mean() < 0.05 and diff.max() <= 1, f"{name}: mean {diff.mean():.3f} max {diff.max()}"
    # BGR input + channel flip gives the same chip
    img, _, pts, dlib_chip = faces["astronaut"]
    bgr_chip = align.align_faces(
        np.ascontiguousarray(img[..., ::-1]), pts[None], template="dlib5", bgr_to_rgb=True
    )
    assert np.abs(bgr_chip[0].astype(int) - dlib_chip).max() <= 1


def test_pyramid_halves_like_dlib():
    img = np.zeros((21, 31, 3), np.uint8)
    img[10, 15] = 255
    down = align.pyramid_down(img)
    assert down.shape == (9, 14, 3)
    # the impulse at (row 10, col 15) spreads over the 5x5 kernel around (4, 6.5) in the halved image
    assert down.sum() > 0 and down[:, :, 0].argmax() // 14 == 4


def test_mtcnn_landmarks_give_dlib_like_embedding(faces, ref, embedders):
    from pipeline.detect.detectors.mtcnn import MTCNNDetector

    _, _, fr = ref
    img, _, _, dlib_chip = faces["astronaut"]
    bgr = np.ascontiguousarray(img[..., ::-1])
    det = MTCNNDetector().detect([bgr])[0]
    assert det.landmarks is not None and len(det.boxes) >= 1
    best = int(np.argmax(det.scores))
    emb = embedders["torch"].embed(bgr, det.landmarks[best : best + 1])
    assert emb.shape == (1, 128)
    dlib_desc = np.array(fr.compute_face_descriptor(dlib_chip), np.float32)
    assert FaceEmbedder.distance(emb[0], dlib_desc) < 0.2
    chip = align.align_faces(bgr, det.landmarks[best : best + 1], bgr_to_rgb=True)[0]
    assert np.abs(chip.astype(np.int16) - dlib_chip.astype(np.int16)).mean() < 15


# ---- the embedder's contract -----------------------------------------------------------------------------


def test_embedder_contract(embedders, faces):
    emb = embedders["torch"]
    assert emb.model_id.startswith("dlib-resnet-v1:") and len(emb.model_id.split(":")[1]) == 8
    assert embedders["onnxruntime"].model_id == emb.model_id
    img = faces["astronaut"][0]
    assert emb.embed(img, np.zeros((0, 5, 2), np.float32)).shape == (0, 128)
    with pytest.raises(ValueError, match="chips must have shape"):
        emb.embed_chips(np.zeros((2, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        emb.embed_chips(np.zeros((1, 150, 150, 3), np.float32))
    with pytest.raises(ValueError, match="landmarks must have shape"):
        emb.embed(img, np.zeros((1, 68, 2), np.float32))
    with pytest.raises(align.AlignmentError, match="NaN"):
        emb.embed(img, np.full((1, 5, 2), np.nan, np.float32))
    with pytest.raises(align.AlignmentError, match="zero-size"):
        emb.embed(img, np.ones((1, 5, 2), np.float32))
    with pytest.raises(ValueError, match="backend"):
        FaceEmbedder(backend="tensorflow")
    # a face half outside the frame still gives a chip (black outside) and an embedding
    pts = faces["astronaut"][2] - [250, 0]
    assert np.isfinite(emb.embed(np.ascontiguousarray(img[..., ::-1]), pts[None].astype(np.float32))).all()
