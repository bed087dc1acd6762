"""The live view's drawing: boxes, labels, track ids, faces, zones, lines and masks end up in the pixels,
and the camera's frame itself is never touched (other stages hold a reference to it)."""

from __future__ import annotations

import numpy as np

from pipeline.config.tracking import CameraZonesConfig
from pipeline.core.types import Detections, FaceMatch, Frame, FrameResult
from pipeline.serve.web.render import annotate, encode_jpeg


def test_annotate_draws_everything_on_a_copy():
    image = np.full((240, 320, 3), 128, np.uint8)
    before = image.copy()
    dets = Detections(
        boxes=np.array([[20, 30, 120, 200]], np.float32),
        scores=np.array([0.87], np.float32),
        class_ids=np.array([0], np.int32),
        labels=["person"],
    )
    result = FrameResult(Frame("cam", 7, 0.0, 0.0, image), dets, "yolo")
    result.faces = [FaceMatch((200, 20, 260, 90), "eileen", "eileen", 0.3, 0.2)]
    zones = CameraZonesConfig.model_validate(
        {
            "zones": {
                "door": {"points": [[0.6, 0.5], [0.95, 0.5], [0.95, 0.95], [0.6, 0.95]], "normalized": True}
            },
            "lines": {"gate": {"points": [[10, 220], [300, 220]]}},
            "masks": [{"points": [[0, 0], [40, 0], [40, 20], [0, 20]]}],
        }
    )
    out = annotate(result, zones, track_ids={0: 42})
    assert np.array_equal(image, before), "the camera's frame was drawn on"
    assert out.shape == image.shape
    assert (out[30:200, 20] == (0, 220, 0)).all(axis=1).mean() > 0.5  # the box's left edge
    assert (out[20:90, 200] == (255, 160, 0)).all(axis=1).mean() > 0.5  # the face box
    assert (out[220, 10:300] == (255, 0, 255)).all(axis=1).mean() > 0.8  # the counting line
    assert (out[120, 192:304] == (0, 200, 255)).all(axis=1).mean() > 0.5  # the zone's top edge
    assert out[5, 5].mean() < 128  # the mask is shaded
    assert encode_jpeg(out)[:2] == b"\xff\xd8"
