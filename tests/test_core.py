"""Core plumbing: queues, config errors, NMS."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchvision

from pipeline.config.schema import ConfigError, load_config, parse_config
from pipeline.core.nms import batched_nms, iou_matrix, nms, soft_nms
from pipeline.core.queues import BoundedQueue, QueueClosed


def test_latest_queue_drops_oldest_and_counts():
    q: BoundedQueue[int] = BoundedQueue(3, "latest", "t")
    for i in range(10):
        q.put(i)
    assert q.dropped == 7
    assert [q.get(0), q.get(0), q.get(0)] == [7, 8, 9]
    assert q.get(0.01) is None


def test_block_queue_keeps_every_item_in_order():
    q: BoundedQueue[int] = BoundedQueue(2, "block", "t")
    got: list[int] = []

    def consume():
        while True:
            try:
                item = q.get(1)
            except QueueClosed:
                return
            if item is not None:
                got.append(item)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(200):
        q.put(i)
    q.close()
    t.join(5)
    assert got == list(range(200))
    assert q.dropped == 0


def test_block_queue_put_times_out_when_full():
    q: BoundedQueue[int] = BoundedQueue(1, "block")
    assert q.put(1)
    assert q.put(2, timeout=0.05) is False


def test_closed_queue_drains_then_raises():
    q: BoundedQueue[int] = BoundedQueue(4)
    q.put(1)
    q.close()
    assert q.get(0) == 1
    with pytest.raises(QueueClosed):
        q.get(0)
    with pytest.raises(QueueClosed):
        q.put(2)


def test_config_error_names_file_key_and_expectation(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("cameras:\n  - id: a\n    source: x.mp4\n    read_timeout_s: fast\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "cameras[0].read_timeout_s" in msg and "number" in msg


def test_config_rejects_unknown_keys_and_duplicate_cameras():
    with pytest.raises(ConfigError, match="detector.modle"):
        parse_config({"cameras": [{"id": "a", "source": "x"}], "detector": {"modle": "y"}})
    with pytest.raises(ConfigError, match="used twice"):
        parse_config({"cameras": [{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]})


def test_config_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("cameras: [\n  {id: a\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*line \d+"):
        load_config(p)


def _random_boxes(rng, n, size=200.0):
    xy = rng.uniform(0, size, (n, 2)).astype(np.float32)
    wh = rng.uniform(5, 60, (n, 2)).astype(np.float32)
    return np.concatenate([xy, xy + wh], 1)


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_torchvision(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 400)
    scores = rng.random(400).astype(np.float32)
    scores[:20] = scores[20:40]  # exact ties
    classes = rng.integers(0, 4, 400)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    assert np.array_equal(nms(boxes, scores, 0.5), ref)
    ref_b = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5
    ).numpy()
    assert np.array_equal(batched_nms(boxes, scores, classes, 0.5), ref_b)


def test_iou_matrix_matches_torchvision_and_handles_degenerate_boxes():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 30), _random_boxes(rng, 40)
    ref = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.allclose(iou_matrix(a, b), ref, atol=1e-6)
    z = np.array([[5, 5, 5, 5]], np.float32)
    assert np.all(np.isfinite(iou_matrix(z, z)))


def test_soft_nms_decays_overlaps_instead_of_removing():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    keep, new_scores = soft_nms(boxes, scores, sigma=0.5)
    assert list(keep) == [0, 2, 1]
    assert new_scores[0] == pytest.approx(0.9) and new_scores[1] == pytest.approx(0.7)
    iou = (9 * 10) / (11 * 10)
    assert new_scores[2] == pytest.approx(0.8 * np.exp(-(iou**2) / 0.5), rel=1e-5)
    # hard NMS would drop box 1 entirely
    assert list(nms(boxes, scores, 0.5)) == [0, 2]


@pytest.mark.parametrize(
    "path", sorted((__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml"))
)
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.cameras
