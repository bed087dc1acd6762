"""YOLO: darknet import checked against OpenCV DNN's Darknet reader, ONNX layouts, class filter, errors.

Reference: cv2.dnn.readNetFromDarknet (opencv-python-headless) on the same cfg/weights and the same
blob (cv2.dnn.blobFromImage, plain resize = our "stretch" mode). Tolerances: raw box/objectness values
max abs diff < 1e-3 (boxes normalised to the input size), matched final boxes IoU > 0.99, score diff < 1e-3.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

from engines.export import export_onnx
from engines.model_store import get_model_files
from engines.onnx_engine import OnnxRuntimeEngine
from pipeline.config.schema import DetectorConfig
from pipeline.core.nms import iou_matrix
from pipeline.detect.detectors.factory import build_detector
from pipeline.detect.detectors.yolo_decode import COCO_CLASSES, LayoutError, detect_layout
from pipeline.models.darknet import DarknetModel, ModelError, load_darknet

RAW_TOL = 1e-3
SCORE_TOL = 1e-3
IOU_MIN = 0.99


def _bgr(name: str) -> np.ndarray:
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3][..., ::-1])


# astronaut, coffee, camera (cameraman) and coins are real photos shipped inside scikit-image
IMAGES = ["astronaut", "coffee", "camera", "coins"]


@pytest.fixture(scope="module")
def tiny_files() -> dict[str, Path]:
    return get_model_files("yolov3-tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny_files) -> DarknetModel:
    return load_darknet(tiny_files["cfg"], tiny_files["weights"])


def _opencv_raw(cfg: Path, weights: Path, blob: np.ndarray) -> np.ndarray:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(blob)
    return np.concatenate(net.forward(net.getUnconnectedOutLayersNames()), 0)


def _compare_raw(ours: np.ndarray, ref: np.ndarray, input_size: int) -> None:
    """ours: (R, 5+C) pixels + obj + cls; ref: OpenCV rows (normalised box, obj, obj*cls zeroed below its thresh)."""
    assert ours.shape == ref.shape
    o = ours.copy()
    o[:, :4] /= input_size
    assert np.abs(o[:, :5] - ref[:, :5]).max() < RAW_TOL
    cls = o[:, 5:] * o[:, 4:5]
    nz = ref[:, 5:] > 0
    assert np.abs(cls[nz] - ref[:, 5:][nz]).max(initial=0) < RAW_TOL


def test_yolov3_tiny_matches_opencv_raw_outputs(tiny_files, tiny_model):
    for name in IMAGES:
        blob = cv2.dnn.blobFromImage(_bgr(name), 1 / 255.0, (416, 416), swapRB=True, crop=False)
        ref = _opencv_raw(tiny_files["cfg"], tiny_files["weights"], blob)
        with torch.inference_mode():
            ours = tiny_model(torch.from_numpy(blob))[0].numpy()
        _compare_raw(ours, ref, 416)


def _opencv_detections(cfg, weights, img, thr, nms_iou):
    h, w = img.shape[:2]
    blob = cv2.dnn.blobFromImage(img, 1 / 255.0, (416, 416), swapRB=True, crop=False)
    rows = _opencv_raw(cfg, weights, blob)
    cls = rows[:, 5:].argmax(1)
    score = rows[np.arange(len(rows)), 5 + cls]
    keep = score >= thr
    r, cls, score = rows[keep], cls[keep], score[keep]
    boxes = [[(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h] for x, y, bw, bh in r[:, :4]]
    idx = cv2.dnn.NMSBoxesBatched(boxes, score.tolist(), cls.tolist(), thr, nms_iou)
    idx = np.asarray(idx, int).reshape(-1)
    xywh = np.asarray(boxes, np.float32).reshape(-1, 4)[idx]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    return np.clip(xyxy, 0, [w, h, w, h]), score[idx], cls[idx]


def test_yolov3_tiny_detections_match_opencv(tiny_files):
    thr, nms_iou = 0.25, 0.45
    det = build_detector(
        DetectorConfig(
            model="yolov3-tiny",
            backend="torch",
            resize="stretch",
            classes=None,
            score_threshold=thr,
            nms_iou=nms_iou,
        )
    )
    total = 0
    for name in IMAGES:
        img = _bgr(name)
        ours = det.detect([img])[0]
        ref_boxes, ref_scores, ref_cls = _opencv_detections(
            tiny_files["cfg"], tiny_files["weights"], img, thr, nms_iou
        )
        assert len(ours) == len(ref_boxes), name
        total += len(ours)
        if not len(ours):
            continue
        iou = iou_matrix(ours.boxes, ref_boxes)
        match = iou.argmax(1)
        assert len(set(match.tolist())) == len(ours), name  # one-to-one
        assert iou.max(1).min() > IOU_MIN, name
        assert np.abs(ours.scores - ref_scores[match]).max() < SCORE_TOL, name
        assert (ours.class_ids == ref_cls[match]).all(), name
    assert total >= 4  # the images do produce detections (cup, 2 persons, clocks)


@pytest.mark.parametrize("resize", ["auto", "letterbox"])
def test_default_detector_finds_the_cameraman(resize):
    det = build_detector(
        DetectorConfig(model="yolov3-tiny", backend="torch", resize=resize)
    )  # classes: person + vehicles
    assert det.preprocess.resize == ("stretch" if resize == "auto" else "letterbox")
    res = det.detect([_bgr("camera"), _bgr("coffee")])
    assert "person" in res[0].labels
    assert set(res[0].labels) <= {"person", "bicycle", "car", "motorcycle", "bus", "truck"}
    assert len(res[1]) == 0  # a cup is filtered out by the class filter
    h, w = _bgr("camera").shape[:2]
    b = res[0].boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_batch_equals_single_images():
    det = build_detector(
        DetectorConfig(model="yolov3-tiny", backend="torch", classes=None, score_threshold=0.2)
    )
    imgs = [_bgr(n) for n in IMAGES]
    batched = det.detect(imgs)
    for img, b in zip(imgs, batched, strict=True):
        s = det.detect([img])[0]
        assert s.labels == b.labels
        np.testing.assert_allclose(s.boxes, b.boxes, atol=1e-2)
        np.testing.assert_allclose(s.scores, b.scores, atol=1e-4)
    assert det.detect([]) == []


def test_unknown_class_in_filter_is_named():
    with pytest.raises(ModelError, match="'unicorn'"):
        build_detector(DetectorConfig(model="yolov3-tiny", backend="torch", classes=["person", "unicorn"]))
    # darknet spellings are accepted and map to COCO names
    det = build_detector(
        DetectorConfig(model="yolov3-tiny", backend="torch", classes=["motorbike", "person"])
    )
    assert det.allowed.sum() == 2 and det.allowed[COCO_CLASSES.index("motorcycle")]


# ---------------------------------------------------------------- errors


def test_truncated_weights_error_names_file_and_counts(tiny_files, tmp_path):
    bad = tmp_path / "cut.weights"
    bad.write_bytes(tiny_files["weights"].read_bytes()[:5_000_000])
    with pytest.raises(ModelError) as err:
        load_darknet(tiny_files["cfg"], bad)
    msg = str(err.value)
    assert str(bad) in msg and "expected 8858734 float32 values" in msg and "truncated" in msg


def test_weights_for_another_cfg_are_rejected(tiny_files, tmp_path):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SYNTH_CFG)
    with pytest.raises(ModelError, match="do not match small.cfg"):
        load_darknet(cfg, tiny_files["weights"])


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ("[crop]\ncrop_width=10\n", "unsupported layer type 'crop'"),
        ("[convolutional]\nfilters=4\nsize=1\nactivation=gelu\n", "unsupported activation 'gelu'"),
        ("[convolutional]\nfilters=4\nsize=1\nxnor=1\n", "unsupported option 'xnor'"),
        ("[route]\nlayers=-9\n", "refers to layer"),
    ],
)
def test_bad_cfg_error_names_file_line_and_layer(tmp_path, patch, needle):
    cfg = tmp_path / "bad.cfg"
    head = "[net]\nwidth=64\nheight=64\nchannels=3\n\n[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n\n"
    cfg.write_text(head + patch)
    line = head.count("\n") + 1
    with pytest.raises(ModelError) as err:
        DarknetModel(cfg)
    msg = str(err.value)
    assert f"{cfg}:{line}:" in msg and needle in msg


# ------------------------------------------- synthetic yolov4-tiny-style net vs OpenCV

# route groups/group_id (CSP), mish + leaky, maxpool size=2 stride=1, shortcut, upsample, route with an
# absolute index, two [yolo] heads with scale_x_y
SYNTH_CFG = """[net]
width=128
height=128
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=mish

[shortcut]
from=-2
activation=linear

[route]
layers=-1,-4

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=1
filters=27
activation=linear

[yolo]
mask=3,4,5
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=4
num=6
scale_x_y=1.05

[route]
layers=-3

[upsample]
stride=2

[route]
layers=-1,7

[convolutional]
size=1
stride=1
pad=1
filters=27
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=4
num=6
scale_x_y=1.1
"""


def write_random_darknet_weights(model: DarknetModel, path: Path, seed: int = 0) -> None:
    """Darknet layout: int32 major, minor, revision; int64 seen; then per conv layer
    [bias] or [beta, gamma, mean, var] followed by the kernel, all float32."""
    rng = np.random.default_rng(seed)
    parts = [np.array([0, 2, 5], np.int32).tobytes(), np.array([12345], np.int64).tobytes()]
    for kind, layer in zip(model.kinds, model.layers, strict=True):
        if kind != "convolutional":
            continue
        conv = layer.conv
        n, fan_in = conv.out_channels, conv.weight[0].numel()
        if layer.batch_normalize:
            parts += [
                rng.normal(0, 0.1, n),
                rng.uniform(0.5, 1.5, n),
                rng.normal(0, 0.1, n),
                rng.uniform(0.5, 1.5, n),
            ]
        else:
            parts.append(rng.normal(0, 0.1, n))
        parts.append(rng.normal(0, 1 / np.sqrt(fan_in), conv.weight.numel()))
    path.write_bytes(b"".join(p if isinstance(p, bytes) else p.astype(np.float32).tobytes() for p in parts))


def test_synthetic_v4_tiny_style_net_matches_opencv(tmp_path):
    cfg, weights = tmp_path / "synth.cfg", tmp_path / "synth.weights"
    cfg.write_text(SYNTH_CFG)
    write_random_darknet_weights(DarknetModel(cfg), weights)
    model = load_darknet(cfg, weights)
    assert model.num_classes == 4 and model.head_strides == [16, 8]
    rng = np.random.default_rng(1)
    blob = rng.uniform(0, 1, (1, 3, 128, 128)).astype(np.float32)
    with torch.inference_mode():
        ours = model(torch.from_numpy(blob))[0].numpy()
    assert ours.shape == (3 * (8 * 8 + 16 * 16), 9)
    _compare_raw(ours, _opencv_raw(cfg, weights, blob), 128)
    # the same network exported to ONNX gives the same rows on ONNX Runtime (batch of 2)
    ort = OnnxRuntimeEngine(export_onnx(model, (1, 3, 128, 128), tmp_path / "synth.onnx"))
    both = ort.run({"images": np.concatenate([blob, blob[:, :, ::-1].copy()])})["output"]
    assert both.shape == (2, *ours.shape)
    assert np.abs(both[0, :, :4] - ours[:, :4]).max() < 128 * RAW_TOL
    assert np.abs(both[0, :, 4:] - ours[:, 4:]).max() < RAW_TOL


def test_maxpool_size2_stride1_keeps_size_and_pads_bottom_right():
    from pipeline.models.darknet import MaxPoolDarknet

    x = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    y = MaxPoolDarknet(2, 1, 1)(x)[0, 0]
    assert y.tolist() == [[4, 5, 5], [7, 8, 8], [7, 8, 8]]


# ---------------------------------------------------------------- ONNX layouts

INPUT = 128
CELLS = (INPUT // 8) ** 2 + (INPUT // 16) ** 2 + (INPUT // 32) ** 2  # 336


class ConstantHead(nn.Module):
    """Emits a fixed output (per image in the batch); stands in for a network of a given layout."""

    def __init__(self, out: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("out", torch.from_numpy(out.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.unsqueeze(0).expand(x.shape[0], *self.out.shape) + 0 * x.mean()


def _export(module: nn.Module, path: Path) -> Path:
    return export_onnx(module, (1, 3, INPUT, INPUT), path)


def _one_box_rows(layout: str) -> tuple[np.ndarray, tuple[float, float, float, float], int]:
    """An output with one confident box (class 2 'car') at input-pixel cx=40, cy=56, w=32, h=16."""
    cx, cy, w, h, cls = 40.0, 56.0, 32.0, 16.0, 2
    if layout == "v8":
        out = np.zeros((84, CELLS), np.float32)
        out[:4, 5] = [cx, cy, w, h]
        out[4 + cls, 5] = 0.9
    elif layout == "v5":
        out = np.zeros((3 * CELLS, 85), np.float32)
        out[7, :5] = [cx, cy, w, h, 0.95]
        out[7, 5 + cls] = 0.9
    else:  # yolox: stride-8 cell (gx=4, gy=6) is row 6*16+4; raw offsets and log-sizes
        out = np.zeros((CELLS, 85), np.float32)
        r = 6 * (INPUT // 8) + 4
        out[r, :5] = [cx / 8 - 4, cy / 8 - 6, np.log(w / 8), np.log(h / 8), 0.95]
        out[r, 5 + cls] = 0.9
    return out, (cx, cy, w, h), cls


@pytest.mark.parametrize("layout", ["v5", "v8", "yolox"])
def test_onnx_layout_autodetected_and_decoded(tmp_path, layout):
    out, (cx, cy, w, h), cls = _one_box_rows(layout)
    path = _export(ConstantHead(out), tmp_path / f"{layout}.onnx")
    det = build_detector(
        DetectorConfig(model=str(path), backend="onnxruntime", input_size=INPUT, classes=["car"])
    )
    assert det.layout == layout
    img = np.zeros((128, 256, 3), np.uint8)  # 2:1 -> scale 0.5 into the 128 input
    res = det.detect([img, img])
    # expected mapping: letterbox scale 0.5; v5/v8 centre the image (pad 32 on top), yolox puts it top-left
    pad_y = 0.0 if layout == "yolox" else 32.0
    expect = np.array(
        [(cx - w / 2) / 0.5, (cy - h / 2 - pad_y) / 0.5, (cx + w / 2) / 0.5, (cy + h / 2 - pad_y) / 0.5]
    )
    for r in res:
        assert r.labels == ["car"] and r.class_ids.tolist() == [cls]
        np.testing.assert_allclose(r.boxes[0], expect, atol=1e-3)
        want = 0.9 if layout == "v8" else 0.95 * 0.9
        assert abs(float(r.scores[0]) - want) < 1e-5
    # the class filter drops it
    det2 = build_detector(
        DetectorConfig(model=str(path), backend="onnxruntime", input_size=INPUT, classes=["person"])
    )
    assert len(det2.detect([img])[0]) == 0


def test_layout_override_and_ambiguous_shape(tmp_path):
    out, _, _ = _one_box_rows("v5")
    bad = out[:100]  # 100 rows fits no stride pattern
    path = _export(ConstantHead(bad), tmp_path / "odd.onnx")
    with pytest.raises(ModelError, match="set detector.layout"):
        build_detector(DetectorConfig(model=str(path), input_size=INPUT))
    det = build_detector(DetectorConfig(model=str(path), input_size=INPUT, layout="v5", classes=None))
    assert det.layout == "v5" and len(det.detect([np.zeros((64, 64, 3), np.uint8)])[0]) == 1
    with pytest.raises(LayoutError):
        detect_layout((1, 10, 3), (INPUT, INPUT))


def test_missing_onnx_and_torch_backend_for_onnx_are_clear(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        build_detector(DetectorConfig(model=str(tmp_path / "nope.onnx")))
    out, _, _ = _one_box_rows("v8")
    path = _export(ConstantHead(out), tmp_path / "v8.onnx")
    with pytest.raises(ModelError, match="'torch' cannot run ONNX"):
        build_detector(DetectorConfig(model=str(path), backend="torch", input_size=INPUT))
    with pytest.raises(ModelError, match="unknown model 'nosuch'"):
        build_detector(DetectorConfig(model="nosuch"))
    with pytest.raises(ModelError, match="'dlib-face-resnet' is not a detector"):
        build_detector(DetectorConfig(model="dlib-face-resnet"))


def test_fixed_batch_onnx_model_gets_one_image_at_a_time(tmp_path):
    out, _, _ = _one_box_rows("v8")
    path = tmp_path / "static.onnx"
    torch.onnx.export(  # no dynamic axes: batch fixed at 1, like the shared YOLOX-Nano file
        ConstantHead(out),
        (torch.zeros(1, 3, INPUT, INPUT),),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["output"],
    )
    det = build_detector(DetectorConfig(model=str(path), input_size=INPUT, classes=None))
    assert det.batch_limit == 1
    res = det.detect([np.zeros((100, 100, 3), np.uint8)] * 3)
    assert [len(r) for r in res] == [1, 1, 1]
