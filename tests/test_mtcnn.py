"""MTCNN face detector on real photos (scikit-image's sample images), with real weights from the model store."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from pipeline.core.nms import iou_matrix
from pipeline.detect.detectors.mtcnn import MTCNNDetector

# Hand-annotated in skimage.data.astronaut() (512x512): the face from hairline to chin, cheek to cheek,
# and the centres of the eyes as seen in the image.
ASTRONAUT_FACE = np.array([180.0, 75.0, 270.0, 180.0])
ASTRONAUT_LEFT_EYE = np.array([205.0, 102.0])
ASTRONAUT_RIGHT_EYE = np.array([248.0, 103.0])


def bgr(name: str) -> np.ndarray:
    img = getattr(skimage.data, name)()
    code = cv2.COLOR_GRAY2BGR if img.ndim == 2 else cv2.COLOR_RGB2BGR
    return np.ascontiguousarray(cv2.cvtColor(img, code))


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(min_face_size=20)


def check_landmarks_plausible(box: np.ndarray, lm: np.ndarray) -> None:
    left_eye, right_eye, nose, mouth_left, mouth_right = lm
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # left/right as seen
    eyes_y = (left_eye[1] + right_eye[1]) / 2
    mouth_y = (mouth_left[1] + mouth_right[1]) / 2
    assert eyes_y < nose[1] < mouth_y  # eyes above nose above mouth
    assert left_eye[0] < nose[0] < right_eye[0]
    x1, y1, x2, y2 = box
    assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))


def test_finds_the_astronauts_face_and_landmarks(detector: MTCNNDetector) -> None:
    (det,) = detector.detect([bgr("astronaut")])
    assert len(det) == 1
    assert det.labels == ["face"] and det.class_ids.tolist() == [0]
    assert det.boxes.dtype == np.float32 and det.landmarks is not None and det.landmarks.shape == (1, 5, 2)
    assert det.scores[0] > 0.9
    assert iou_matrix(det.boxes, ASTRONAUT_FACE[None])[0, 0] > 0.5
    check_landmarks_plausible(det.boxes[0], det.landmarks[0])
    assert np.linalg.norm(det.landmarks[0, 0] - ASTRONAUT_LEFT_EYE) < 12
    assert np.linalg.norm(det.landmarks[0, 1] - ASTRONAUT_RIGHT_EYE) < 12


def test_mirrored_photo_mirrors_box_and_keeps_left_right_as_seen(detector: MTCNNDetector) -> None:
    img = bgr("astronaut")
    (det,) = detector.detect([img])
    (flip,) = detector.detect([np.ascontiguousarray(img[:, ::-1])])
    assert len(flip) == 1
    w = img.shape[1]
    mirrored = np.array([w - det.boxes[0, 2], det.boxes[0, 1], w - det.boxes[0, 0], det.boxes[0, 3]])
    assert iou_matrix(flip.boxes, mirrored[None])[0, 0] > 0.8
    check_landmarks_plausible(flip.boxes[0], flip.landmarks[0])
    # the image-left eye of the mirrored photo is the mirror image of the original's image-right eye
    assert abs((w - det.landmarks[0, 1, 0]) - flip.landmarks[0, 0, 0]) < 6


@pytest.mark.parametrize("name", ["coffee", "rocket", "chelsea", "coins"])
def test_no_faces_in_photos_without_people(detector: MTCNNDetector, name: str) -> None:
    (det,) = detector.detect([bgr(name)])
    assert len(det) == 0, f"{name}: unexpected faces {det.boxes.tolist()} scores {det.scores.tolist()}"
    assert det.landmarks is not None and det.landmarks.shape == (0, 5, 2)


def test_min_face_size_controls_small_faces() -> None:
    small = cv2.resize(bgr("astronaut"), (160, 160), interpolation=cv2.INTER_AREA)  # face now ~30 px
    (found,) = MTCNNDetector(min_face_size=20).detect([small])
    assert len(found) == 1
    assert iou_matrix(found.boxes, (ASTRONAUT_FACE * 160 / 512)[None])[0, 0] > 0.4
    (missed,) = MTCNNDetector(min_face_size=80).detect([small])
    assert len(missed) == 0


def test_batch_of_mixed_sizes_equals_one_by_one(detector: MTCNNDetector) -> None:
    a = bgr("astronaut")
    b = bgr("coffee")
    c = np.ascontiguousarray(a[:, ::-1])
    batch = detector.detect([a, b, c])
    singles = [detector.detect([x])[0] for x in (a, b, c)]
    assert [len(d) for d in batch] == [1, 0, 1]
    for got, want in zip(batch, singles, strict=True):
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(got.landmarks, want.landmarks, atol=1e-3)
    assert detector.detect([]) == []
    (tiny,) = detector.detect([np.full((10, 16, 3), 128, np.uint8)])  # smaller than one P-Net window
    assert len(tiny) == 0 and tiny.landmarks.shape == (0, 5, 2)


def test_bad_input_is_reported() -> None:
    with pytest.raises(ValueError, match="min_face_size"):
        MTCNNDetector(min_face_size=5)
    with pytest.raises(ValueError, match="thresholds"):
        MTCNNDetector(thresholds=(0.6, 0.7))
    det = MTCNNDetector()
    with pytest.raises(ValueError, match="image 1"):
        det.detect([bgr("astronaut"), np.zeros((10, 10), np.uint8)])


def test_agrees_with_facenet_pytorch_reference(detector: MTCNNDetector) -> None:
    """facenet-pytorch's MTCNN (its own converted weights) as an independent reference."""
    ref_mod = pytest.importorskip("facenet_pytorch", reason="reference: pip install facenet-pytorch==2.6.0")
    ref = ref_mod.MTCNN(keep_all=True, min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709)
    astro = bgr("astronaut")
    images = {
        "astronaut": astro,
        "mirrored": np.ascontiguousarray(astro[:, ::-1]),
        "small": cv2.resize(astro, (200, 200), interpolation=cv2.INTER_AREA),
        "two faces": np.ascontiguousarray(np.hstack([astro, astro[:, ::-1]])),
        "coffee": bgr("coffee"),
    }
    for name, img in images.items():
        (ours,) = detector.detect([img])
        boxes, _probs, points = ref.detect(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), landmarks=True)
        ref_boxes = np.zeros((0, 4), np.float32) if boxes is None else boxes.astype(np.float32)
        assert len(ours) == len(ref_boxes), f"{name}: ours {ours.boxes.tolist()} ref {ref_boxes.tolist()}"
        if len(ref_boxes):
            iou = iou_matrix(ours.boxes, ref_boxes)
            assert (iou.max(axis=1) > 0.7).all(), f"{name}: IoU with reference {iou.max(axis=1)}"
            j = iou.argmax(axis=1)
            side = ours.boxes[:, 2] - ours.boxes[:, 0]
            ref_points = np.stack([np.asarray(p, np.float32) for p in points])
            err = np.linalg.norm(ours.landmarks - ref_points[j], axis=2).max(axis=1)
            assert (err < 0.08 * side).all(), f"{name}: landmark distance {err} vs face size {side}"


def test_folded_input_scaling_and_bgr_match_the_plain_nets() -> None:
    """load_mtcnn folds (x - 127.5) / 128 and, with bgr=True, the channel order into conv1: the outputs
    must equal the unmodified nets fed normalised RGB."""
    import torch

    from engines.model_store import get_model_files
    from pipeline.models.mtcnn import ONet, PNet, RNet, _load, load_mtcnn

    files = get_model_files("mtcnn")
    plain = [
        _load(cls(), files[role], role) for cls, role in ((PNet, "pnet"), (RNet, "rnet"), (ONet, "onet"))
    ]
    folded = load_mtcnn(bgr=True)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for ref_net, net, shape in zip(
            plain, folded, [(1, 3, 40, 52), (6, 3, 24, 24), (4, 3, 48, 48)], strict=True
        ):
            rgb = torch.rand(shape, generator=gen) * 255
            want = ref_net((rgb - 127.5) * 0.0078125)
            got = net(rgb.flip(1))
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_same_nets_as_facenet_pytorch() -> None:
    """Independent check of the layer layout (flatten order, head order, landmark x/y order): our nets and
    facenet-pytorch's, with their own weights files, give the same outputs."""
    import torch

    fp = pytest.importorskip(
        "facenet_pytorch.models.mtcnn", reason="reference: pip install facenet-pytorch==2.6.0"
    )
    from pipeline.models.mtcnn import load_mtcnn

    ours = load_mtcnn()
    theirs = (fp.PNet(), fp.RNet(), fp.ONet())
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        x = torch.rand((1, 3, 60, 80), generator=gen) * 255
        prob, reg = ours[0](x)
        t_reg, t_prob = theirs[0]((x - 127.5) * 0.0078125)
        torch.testing.assert_close(prob, t_prob[:, 1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reg, t_reg, atol=1e-4, rtol=1e-4)
        x = torch.rand((8, 3, 48, 48), generator=gen) * 255
        prob, reg, lmk = ours[2](x)
        t_reg, t_lmk, t_prob = theirs[2]((x - 127.5) * 0.0078125)
        torch.testing.assert_close(prob, t_prob[:, 1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lmk, t_lmk, atol=1e-4, rtol=1e-4)


def test_detector_config_model_mtcnn_builds_the_face_detector():
    from pipeline.config.schema import DetectorConfig
    from pipeline.detect.detectors.factory import build_detector

    det = build_detector(DetectorConfig(model="mtcnn"))
    faces = det.detect([np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])])[0]
    assert faces.labels == ["face"] and faces.landmarks is not None and faces.landmarks.shape == (1, 5, 2)


def test_onnx_export_of_each_net_agrees_with_torch():
    """Every MTCNN net exports to ONNX (P-Net with dynamic height and width) and ONNX Runtime gives the same
    faces and landmarks as PyTorch on real photos."""
    torch_det = MTCNNDetector()
    ort_det = MTCNNDetector(backend="onnxruntime")
    photos = [
        skimage.data.astronaut(),
        cv2.resize(skimage.data.astronaut(), (300, 420)),
        skimage.data.coffee(),
    ]
    for rgb in photos:
        img = np.ascontiguousarray(rgb[..., ::-1])
        a, b = torch_det.detect([img])[0], ort_det.detect([img])[0]
        assert len(a) == len(b)
        if len(a):
            assert np.abs(a.boxes - b.boxes).max() < 1e-2
            assert np.abs(a.scores - b.scores).max() < 1e-4
            assert np.abs(a.landmarks - b.landmarks).max() < 1e-2
    assert len(torch_det.detect([np.ascontiguousarray(photos[0][..., ::-1])])[0]) == 1


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend"):
        MTCNNDetector(backend="tensorflow")
