"""pipeline.detect.evaluation: COCO mAP must match pycocotools; VOC 11-point AP on a case worked out by hand."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.detect.evaluation import (
    DARKNET_TO_COCO_ID,
    EvaluationError,
    category_ids_for,
    evaluate_coco,
    evaluate_voc,
    format_coco_table,
    label_to_category_id,
    load_coco,
    voc_ap_11,
)

CATS = [
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
    {"id": 4, "name": "motorcycle"},
    {"id": 18, "name": "dog"},
]


def synthetic(seed: int, n_images: int = 25) -> tuple[dict, list[dict]]:
    """Random ground truth (several classes, small/medium/large boxes, some crowd regions, annotation areas
    that differ from box areas as segmentation areas do) and detections: jittered true boxes with varied
    scores, duplicates, misses, random false positives, exact score ties."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    ann_id = 1
    for img_id in range(1, n_images + 1):
        w, h = 640, 480
        images.append({"id": img_id * 7, "width": w, "height": h, "file_name": f"{img_id}.jpg"})
        for _ in range(rng.integers(0, 9)):
            cat = int(rng.choice([c["id"] for c in CATS], p=[0.5, 0.25, 0.1, 0.15]))
            side = float(rng.choice([rng.uniform(8, 30), rng.uniform(33, 95), rng.uniform(100, 300)]))
            bw, bh = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            crowd = int(rng.random() < 0.08)
            area = bw * bh * rng.uniform(0.55, 0.95)  # like a segmentation area
            anns.append(
                {
                    "id": ann_id,
                    "image_id": img_id * 7,
                    "category_id": cat,
                    "bbox": [x, y, bw, bh],
                    "area": area,
                    "iscrowd": crowd,
                }
            )
            ann_id += 1
            if rng.random() < 0.8:  # found, with jitter
                for _rep in range(1 + int(rng.random() < 0.15)):  # sometimes a duplicate
                    j = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
                    dets.append(
                        {
                            "image_id": img_id * 7,
                            "category_id": cat if rng.random() < 0.9 else int(rng.choice([1, 3, 4, 18])),
                            "bbox": [x + j[0], y + j[1], max(1.0, bw + j[2]), max(1.0, bh + j[3])],
                            "score": float(np.round(rng.uniform(0.05, 1.0), 2)),  # rounding makes ties
                        }
                    )
        for _ in range(rng.integers(0, 6)):  # false positives
            bw, bh = rng.uniform(5, 200, 2)
            dets.append(
                {
                    "image_id": img_id * 7,
                    "category_id": int(rng.choice([1, 3, 4, 18])),
                    "bbox": [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh],
                    "score": float(np.round(rng.uniform(0.01, 0.9), 2)),
                }
            )
    # one image with > 100 detections of one class, to exercise maxDets
    for i in range(130):
        dets.append(
            {
                "image_id": 7,
                "category_id": 1,
                "bbox": [float(i % 60) * 10, float(i // 60) * 100, 30.0, 60.0],
                "score": float(rng.uniform(0.01, 0.99)),
            }
        )
    gt = {"images": images, "annotations": anns, "categories": copy.deepcopy(CATS)}
    return gt, dets


def pycocotools_stats(gt: dict, dets: list[dict], cat_ids: list[int] | None = None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        res = coco.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco, res, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_map_matches_pycocotools(seed: int) -> None:
    gt, dets = synthetic(seed)
    assert any(a["iscrowd"] for a in gt["annotations"]), "the synthetic set must contain crowd regions"
    ours = np.asarray(evaluate_coco(gt, dets).as_list())
    ref = pycocotools_stats(gt, dets)
    assert ref[0] > 0.05 and ref[0] < 0.95  # a non-trivial score, so agreement means something
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_class_filter_matches_pycocotools_catids() -> None:
    gt, dets = synthetic(5)
    ids = category_ids_for(gt, ["person", "vehicle"])  # 'vehicle' expands to the vehicle classes present
    assert ids == [1, 3, 4]
    ours = evaluate_coco(gt, dets, category_ids=ids)
    ref = pycocotools_stats(gt, dets, cat_ids=ids)
    np.testing.assert_allclose(ours.as_list(), ref, atol=1e-3)
    assert set(ours.per_class) == {"person", "car", "motorcycle"}
    # filtering changes the answer versus all classes (the dog class is left out)
    assert not np.allclose(ours.as_list(), evaluate_coco(gt, dets).as_list())


def test_perfect_and_empty_detections() -> None:
    gt, _ = synthetic(3, n_images=6)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    res = evaluate_coco(gt, perfect)
    assert res.stats["AP"] == pytest.approx(1.0)
    assert res.stats["AP50"] == pytest.approx(1.0)
    none = evaluate_coco(gt, [])
    assert none.stats["AP"] == pytest.approx(0.0)
    assert none.stats["AR100"] == pytest.approx(0.0)


def test_bad_detection_is_named() -> None:
    gt, dets = synthetic(4, n_images=3)
    with pytest.raises(EvaluationError, match=r"detections\[1\]"):
        evaluate_coco(gt, [dets[0], {"image_id": 7, "bbox": [1, 2, 3, 4], "score": 0.5}])
    with pytest.raises(EvaluationError, match="image_id 999"):
        evaluate_coco(gt, [{"image_id": 999, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}])
    with pytest.raises(EvaluationError, match="unknown class 'unicorn'"):
        category_ids_for(gt, ["person", "unicorn"])


def test_load_coco_errors(tmp_path) -> None:
    with pytest.raises(EvaluationError, match="not found"):
        load_coco(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(EvaluationError, match="annotations"):
        load_coco(bad)


def test_darknet_mapping_and_aliases() -> None:
    gt = {
        "categories": [{"id": i, "name": n} for i, n in [(4, "motorcycle"), (72, "tv"), (90, "toothbrush")]]
    }
    assert DARKNET_TO_COCO_ID[0] == 1 and DARKNET_TO_COCO_ID[-1] == 90
    assert len(set(DARKNET_TO_COCO_ID)) == 80 and 12 not in DARKNET_TO_COCO_ID
    assert label_to_category_id(gt, ["motorbike", "tvmonitor", "zebra"]) == [4, 72, None]
    assert category_ids_for(gt, ["motorbike"]) == [4]


def test_voc_11_point_ap_by_hand() -> None:
    # one class, 2 images, 3 ground-truth boxes (+1 crowd box acting as 'difficult').
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [100, 100, 40, 40], "iscrowd": 1},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP   (1/3, P 1)
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},  # FP duplicate
        {"image_id": 2, "category_id": 1, "bbox": [100, 100, 40, 40], "score": 0.75},  # difficult: ignored
        {"image_id": 2, "category_id": 1, "bbox": [200, 200, 5, 5], "score": 0.7},  # FP
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 19, 19], "score": 0.6},  # TP (2/3, P 2/4)
    ]
    # (precision, recall) down the list: (1, 1/3), (1/2, 1/3), ignored, (1/3, 1/3), (1/2, 2/3).
    # r = 0, .1, .2, .3 -> max precision at recall >= r = 1      (4 points)
    # r = .4, .5, .6    -> 1/2                                   (3 points)
    # r = .7 .. 1.0     -> 0                                     (4 points)
    expected = (4 * 1.0 + 3 * 0.5) / 11
    res = evaluate_voc(gt, dets)
    assert res["person"] == pytest.approx(expected)
    assert res["mAP"] == pytest.approx(expected)
    assert voc_ap_11(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)


def test_table_lists_classes() -> None:
    gt, dets = synthetic(6, n_images=8)
    res = evaluate_coco(gt, dets)
    table = format_coco_table(res, evaluate_voc(gt, dets))
    assert "| AP50 |" in table and "| person |" in table and "VOC07" in table


# ---- the evaluate subcommand ------------------------------------------------------------------------


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    import run_pipeline

    rc = run_pipeline.main(["evaluate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _table_value(text: str, metric: str) -> float:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == metric:
            return float(cells[1])
    raise AssertionError(f"{metric} not in output:\n{text}")


def test_cli_scores_a_results_file(tmp_path, capsys) -> None:
    gt, dets = synthetic(7, n_images=12)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    rc, out, _ = _run_cli(
        ["--annotations", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dets.json")], capsys
    )
    assert rc == 0
    ref = pycocotools_stats(gt, dets)
    assert _table_value(out, "AP") == pytest.approx(ref[0], abs=1e-4)
    assert _table_value(out, "AP50") == pytest.approx(ref[1], abs=1e-4)
    rc, out, _ = _run_cli(
        [
            "--annotations",
            str(tmp_path / "gt.json"),
            "--detections",
            str(tmp_path / "dets.json"),
            "--classes",
            "car",
        ],
        capsys,
    )
    assert rc == 0 and _table_value(out, "AP") == pytest.approx(pycocotools_stats(gt, dets, [3])[0], abs=1e-4)


def test_cli_errors_name_the_problem(tmp_path, capsys) -> None:
    gt, _ = synthetic(8, n_images=2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rc, _, err = _run_cli(["--annotations", str(tmp_path / "nope.json"), "--images", str(tmp_path)], capsys)
    assert rc == 2 and "nope.json" in err and "not found" in err
    rc, _, err = _run_cli(["--annotations", str(tmp_path / "gt.json"), "--images", str(tmp_path)], capsys)
    assert rc == 2 and "1.jpg" in err  # the images named in the annotations are missing from the folder
    rc, _, err = _run_cli(
        ["--annotations", str(tmp_path / "gt.json"), "--detections", "x.json", "--classes", "unicorn"], capsys
    )
    assert rc == 2 and "unicorn" in err


def test_cli_runs_real_yolo_on_real_photos(tmp_path, capsys) -> None:
    """yolov3-tiny (model store) over two real photos written by the test; the cup box in skimage's coffee
    photo was annotated by hand (cup with handle, no saucer)."""
    import cv2
    import skimage.data

    imgs = tmp_path / "images"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "coffee.jpg"), cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(imgs / "rocket.jpg"), cv2.cvtColor(skimage.data.rocket(), cv2.COLOR_RGB2BGR))
    gt = {
        "images": [
            {"id": 11, "file_name": "coffee.jpg", "width": 600, "height": 400},
            {"id": 12, "file_name": "rocket.jpg", "width": 640, "height": 427},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 11,
                "category_id": 47,
                "bbox": [172, 18, 240, 282],
                "area": 52000,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 47, "name": "cup"}, {"id": 1, "name": "person"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out_json = tmp_path / "dets.json"
    rc, out, err = _run_cli(
        ["--annotations", str(tmp_path / "gt.json"), "--images", str(imgs), "--output", str(out_json),
         "--model", "yolov3-tiny"], capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert "note:" not in out  # yolov3-tiny has every COCO class
    dets = json.loads(out_json.read_text())
    assert dets and {d["image_id"] for d in dets} <= {11, 12}
    cups = sorted((d for d in dets if d["category_id"] == 47), key=lambda d: -d["score"])
    assert cups and cups[0]["image_id"] == 11
    x, y, w, h = cups[0]["bbox"]
    inter = max(0, min(x + w, 412) - max(x, 172)) * max(0, min(y + h, 300) - max(y, 18))
    assert inter / (w * h + 240 * 282 - inter) > 0.5  # xywh conversion and category mapping are right
    assert _table_value(out, "AP50") == pytest.approx(evaluate_coco(gt, dets).stats["AP50"], abs=1e-4)
    assert _table_value(out, "AP50") >= 0.5


def test_cli_says_when_the_model_lacks_classes_being_scored(tmp_path, capsys) -> None:
    """The person-only SSDlite scored on a cup and a person: the cup category has ground truth but no class
    of the model, so its AP 0 would silently halve the mean; evaluate says so, and says --classes person."""
    import cv2
    import skimage.data

    imgs = tmp_path / "images"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "coffee.jpg"), cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(imgs / "astronaut.jpg"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    gt = {
        "images": [
            {"id": 11, "file_name": "coffee.jpg", "width": 600, "height": 400},
            {"id": 12, "file_name": "astronaut.jpg", "width": 512, "height": 512},
        ],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 47, "bbox": [172, 18, 240, 282], "area": 67680, "iscrowd": 0},
            {"id": 2, "image_id": 12, "category_id": 1, "bbox": [140, 20, 330, 490], "area": 161700, "iscrowd": 0},
        ],
        "categories": [{"id": 47, "name": "cup"}, {"id": 1, "name": "person"}],
    }  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    base = [
        "--annotations",
        str(tmp_path / "gt.json"),
        "--images",
        str(imgs),
        "--model",
        "ssdlite-mobilenetv2-coco",
    ]
    rc, out, err = _run_cli(base, capsys)
    assert rc == 0, err
    assert "has no class for 1 of the 2 categories" in out and "cup" in out and "--classes person" in out
    assert "--classes person" in err
    rc, out, err = _run_cli([*base, "--classes", "person"], capsys)
    assert rc == 0, err
    assert "note:" not in out and "note:" not in err


def test_bad_tiles_option_still_closes_the_detector(tmp_path, monkeypatch) -> None:
    """A --tiles value the tiling config rejects is reported, and the detector already built is closed."""
    import argparse

    from pipeline.cli import evaluate as evaluate_cli
    from pipeline.detect.detectors import factory
    from pipeline.detect.detectors.base import NullDetector

    closed: list[bool] = []

    class Recording(NullDetector):
        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(factory, "build_detector", lambda cfg: Recording())
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    args = parser.parse_args(["--annotations", "gt.json", "--tiles", "8"])  # tiles must be >= 32 px
    gt, _ = synthetic(9, n_images=1)
    with pytest.raises(evaluate_cli.EvaluationError, match="--tiles"):
        evaluate_cli._run_detector(args, gt, gt["images"], tmp_path)
    assert closed == [True]
