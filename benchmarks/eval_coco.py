"""COCO evaluation of a detector on /work/shared/data/coco_subset, scored by pipeline.detect.evaluation and, on the
same detections, by pycocotools (the two must agree to 1e-3).

Run: .venv/bin/python benchmarks/eval_coco.py [--model yolov3-tiny] [--backend onnxruntime] [--limit N]
Prints markdown: all classes, then person + vehicles only, then the largest difference from pycocotools.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run_pipeline  # noqa: E402
from pipeline.detect.evaluation import category_ids_for, evaluate_coco, load_coco  # noqa: E402

DATA = Path("/work/shared/data/coco_subset")


def pycocotools_stats(gt: dict, dets: list[dict], cat_ids: list[int] | None) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov3-tiny")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dets_path = Path(tmp) / "dets.json"
        common = ["evaluate", "--annotations", str(DATA / "instances.json")]
        run_args = [
            *common,
            "--images",
            str(DATA / "images"),
            "--model",
            args.model,
            "--backend",
            args.backend,
        ]
        if args.limit:
            run_args += ["--limit", str(args.limit)]
        if run_pipeline.main([*run_args, "--output", str(dets_path)]) != 0:
            return 1
        print()
        filtered = [*common, "--detections", str(dets_path), "--classes", "person,vehicle"]
        if args.limit:
            filtered += ["--limit", str(args.limit)]
        run_pipeline.main(filtered)
        dets = json.loads(dets_path.read_text())
    gt = load_coco(DATA / "instances.json")
    ids = sorted(int(im["id"]) for im in gt["images"])[: args.limit or None]
    sub = {
        **gt,
        "images": [im for im in gt["images"] if int(im["id"]) in ids],
        "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in ids],
    }
    print("\n| check | max abs difference vs pycocotools (12 stats) |\n|---|---|")
    for label, cats in (
        ("all classes", None),
        ("person+vehicle", category_ids_for(gt, ["person", "vehicle"])),
    ):
        ours = np.asarray(evaluate_coco(sub, dets, category_ids=cats).as_list())
        ref = pycocotools_stats(sub, dets, cats)
        print(f"| {label} | {np.abs(ours - ref).max():.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
