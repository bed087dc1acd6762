"""pipeline/core/nms.py keeps exactly what torchvision keeps: every size, ties, thresholds that are not float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_vanilla

from engines.cuda.synthetic import clustered_detections
from pipeline.analyze.tracking.geometry import iou_matrix as tracking_iou
from pipeline.core import nms as nms_module
from pipeline.core.nms import BLOCK, SMALL_GROUP, batched_nms, iou_matrix, nms


def _inputs(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, s, c = clustered_detections(np.random.default_rng(seed), 1, n, num_classes=classes)
    return b[0], s[0], c[0].astype(np.int64)


def _is_score_order(keep: np.ndarray, scores: np.ndarray) -> bool:
    s = scores[keep]
    return bool(np.all((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (keep[:-1] < keep[1:]))))


SIZES = [10, 100, 300, 1000, 3000, 10000, 100000]  # a frame's candidates (100-1k) up to a tiled batch's


@pytest.fixture(params=["ort", "kernel", "numpy-first"], autouse=True)
def path(request, monkeypatch):
    """Every test runs on each path: ONNX Runtime's operator (the default for inputs it takes), and with it
    switched off, torchvision's kernel loaded (every size through the kernel paths) and as a fresh run
    without ONNX Runtime sees it (torch not loaded: inputs up to NUMPY_PAIRS pairs suppressed in NumPy)."""
    if request.param != "ort":
        monkeypatch.setattr(nms_module, "USE_ORT", False)
    if request.param == "kernel":
        nms_module.warm_up()
        monkeypatch.setattr(nms_module, "NUMPY_PAIRS", -1)
    elif request.param == "numpy-first":
        monkeypatch.setattr(nms_module, "_KERNEL", None)
    return request.param


@pytest.mark.parametrize("path", ["numpy-first"], indirect=True)  # only about a fresh run's path
def test_a_fresh_run_does_not_load_torch_for_a_frames_candidates(path):
    b, s, c = _inputs(300, 6, 3)
    batched_nms(b, s, c, 0.5)
    nms(b, s, 0.5)
    assert nms_module._KERNEL is None  # torch not needed for them
    b, s, c = _inputs(3000, 1, 4)
    nms(b, s, 0.5)  # 4.5M pairs: the kernel is loaded for it
    assert nms_module._KERNEL is not None


@pytest.mark.parametrize("path", ["ort"], indirect=True)
def test_onnx_runtime_takes_every_size_without_torch(path, monkeypatch):
    monkeypatch.setattr(nms_module, "_KERNEL", None)
    for n, classes in ((100, 6), (3000, 1), (3000, 80)):
        b, s, c = _inputs(n, classes, n)
        nms(b, s, 0.5)
        batched_nms(b, s, c, 0.5)
    assert nms_module._KERNEL is None


@pytest.mark.parametrize("path", ["ort"], indirect=True)
def test_inputs_onnx_runtime_would_change_go_the_exact_paths(path):
    """NaN/-inf scores (ONNX Runtime drops them), inverted boxes (it reorders their corners), thresholds
    outside [0, 1] (it refuses them): torchvision's kept set all the same."""
    b, s, c = _inputs(300, 6, 11)
    cases = []
    s_nan = s.copy()
    s_nan[::7] = np.nan
    cases.append((b, s_nan, 0.5))
    s_inf = s.copy()
    s_inf[::5] = -np.inf
    cases.append((b, s_inf, 0.5))
    inverted = b.copy()
    inverted[::3] = inverted[::3][:, [2, 3, 0, 1]]
    cases.append((inverted, s, 0.5))
    cases.append((b, s, 1.5))
    for boxes, scores, thr in cases:
        assert not nms_module._ort_takes(boxes, scores, thr)
        tb, ts, tc = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(c)
        assert set(nms(boxes, scores, thr).tolist()) == set(torchvision.ops.nms(tb, ts, thr).tolist())
        ref = _batched_nms_vanilla(tb, ts, tc, thr)
        assert set(batched_nms(boxes, scores, c, thr).tolist()) == set(ref.tolist())


@pytest.mark.parametrize("path", ["ort"], indirect=True)
def test_many_classes_and_boxes_go_one_call_per_class(path, monkeypatch):
    monkeypatch.setattr(nms_module, "ORT_SCORE_CELLS", 1000)  # 300 boxes x 80 classes is over it
    b, s, c = _inputs(300, 80, 12)
    ref = _batched_nms_vanilla(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c), 0.5)
    ours = batched_nms(b, s, c, 0.5)
    assert set(ours.tolist()) == set(ref.tolist()) and len(ours) == len(ref)
    assert _is_score_order(ours, s)


@pytest.mark.parametrize("path", ["ort"], indirect=True)
def test_the_embedded_onnx_graph_is_one_non_max_suppression_node(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node(
                "NonMaxSuppression", ["boxes", "scores", "max_per_class", "iou", "score_min"], ["selected"]
            )
        ],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, None]),
            helper.make_tensor_value_info("max_per_class", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("score_min", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    assert onnx.load_from_string(nms_module._ORT_NMS_MODEL) == model


@pytest.mark.parametrize("n", SIZES)
def test_agnostic_nms_keeps_torchvisions_boxes_in_its_order(n):
    b, s, _ = _inputs(n, 1, n)  # scores rounded to 2 decimals: thousands of ties
    ours = nms(b, s, 0.5)
    ref = torchvision.ops.nms(torch.from_numpy(b), torch.from_numpy(s), 0.5).numpy()
    assert np.array_equal(ours, ref)
    assert _is_score_order(ours, s)


@pytest.mark.parametrize("classes", [6, 80])
@pytest.mark.parametrize("n", SIZES)
def test_batched_nms_keeps_torchvisions_per_class_boxes(n, classes):
    b, s, c = _inputs(n, classes, n + classes)
    ours = batched_nms(b, s, c, 0.5)
    tb, ts, tc = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c)
    exact = _batched_nms_vanilla(tb, ts, tc, 0.5).numpy()
    assert set(ours.tolist()) == set(exact.tolist()) and len(ours) == len(exact)
    assert set(ours.tolist()) == set(torchvision.ops.batched_nms(tb, ts, tc, 0.5).tolist())
    assert _is_score_order(ours, s)


def test_both_paths_of_batched_nms_agree_with_torchvision():
    """Classes with <= SMALL_GROUP boxes go through the NumPy pair path, larger ones through the kernel."""
    b, s, c = _inputs(4000, 6, 7)
    c[:300] = 99  # one class with few boxes next to five large ones
    c[300:330] = 98
    sizes = np.bincount(c)
    assert (sizes[sizes > 0] <= SMALL_GROUP).any() and (sizes > SMALL_GROUP).any()
    for thr in (0.3, 0.45, 0.5, 0.6, 0.7):
        ref = _batched_nms_vanilla(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c), thr)
        assert set(batched_nms(b, s, c, thr).tolist()) == set(ref.tolist()), thr


@pytest.mark.parametrize("thr, inner, outer, kept", [(0.6, 3, 5, [0]), (0.45, 9, 20, [0, 1])])
def test_threshold_is_compared_in_double_like_torchvision(thr, inner, outer, kept):
    """IoU exactly float32(0.6) = 0.60000002 is > 0.6: suppressed; float32(0.45) = 0.44999999 is not.

    Comparing in float32 instead (NumPy's default for a Python float against a float32 array) keeps both
    boxes at 0.6.
    """
    # a box of width ``inner`` inside one of width ``outer``, height 1: float32 IoU = inner / outer exactly
    boxes = np.array([[0, 0, inner, 1], [0, 0, outer, 1]], np.float32)
    assert iou_matrix(boxes[:1], boxes[1:])[0, 0] == np.float32(thr)
    scores = np.array([0.9, 0.8], np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
    assert ref == kept
    assert nms(boxes, scores, thr).tolist() == kept
    assert batched_nms(boxes, scores, np.zeros(2, np.int64), thr).tolist() == kept
    # the same pair split across blocks: the first box settled by the kernel, the second by the vectorised pass
    pad = np.array([[10 * i, 100, 10 * i + 5, 105] for i in range(BLOCK + 20)], np.float32)
    big = np.concatenate([boxes[:1], pad, boxes[1:]])
    big_scores = np.concatenate([[0.99], np.full(len(pad), 0.9), [0.1]]).astype(np.float32)
    want = torchvision.ops.nms(torch.from_numpy(big), torch.from_numpy(big_scores), thr).numpy()
    assert (len(big) - 1 in want) == (len(kept) == 2)
    assert np.array_equal(nms(big, big_scores, thr), want)


def test_equal_scores_keep_the_lower_index():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]
    assert batched_nms(boxes, scores, np.array([2, 2, 2, 1]), 0.5).tolist() == [0, 3]
    # the lower index wins even when it comes later in class order
    assert batched_nms(boxes[::-1].copy(), scores, np.array([1, 2, 2, 2]), 0.5).tolist() == [0, 1]


def test_large_coordinates_do_not_merge_classes():
    """Float32 class offsets (80 classes x 20000 px) round coordinates; per-class NMS does not."""
    b, s, c = _inputs(3000, 80, 3)
    b = b * np.float32(20.0) + np.float32(1234.5678)
    ref = _batched_nms_vanilla(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c), 0.5)
    assert set(batched_nms(b, s, c, 0.5).tolist()) == set(ref.tolist())


def test_empty_and_mismatched_inputs():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms(np.zeros((2, 4), np.float32), np.zeros(1, np.float32), 0.5)
    with pytest.raises(ValueError, match="class ids"):
        batched_nms(np.zeros((2, 4), np.float32), np.zeros(2, np.float32), np.zeros(3), 0.5)


def test_one_iou_function_serves_tracking_in_float64():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (20, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 30, (20, 2))], 1)
    t = tracking_iou(a, a[::-1])
    assert t.dtype == np.float64
    np.testing.assert_allclose(t, iou_matrix(a, a[::-1], dtype=np.float64))
    ref = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(a[::-1].copy())).numpy()
    np.testing.assert_allclose(t, ref, rtol=1e-12)
    assert tracking_iou(np.zeros((0, 4)), a).shape == (0, 20)


def test_negative_and_signed_zero_scores_sort_like_torch():
    rng = np.random.default_rng(4)
    b, _, c = _inputs(500, 5, 4)
    s = rng.choice(np.array([-0.5, -0.0, 0.0, 0.25, -1e-30, 1e-30], np.float32), 500)
    keep = batched_nms(b, s, c, 0.5)
    ref = _batched_nms_vanilla(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c), 0.5)
    assert set(keep.tolist()) == set(ref.tolist())
    assert _is_score_order(keep, s)
