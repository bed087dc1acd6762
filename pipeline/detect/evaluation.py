"""Detection evaluation: COCO box mAP (the pycocotools algorithm, re-implemented) and VOC 11-point AP.

COCO (``evaluate_coco``) follows ``pycocotools.cocoeval.COCOeval`` for ``iouType="bbox"`` step by step, so the
numbers agree with it: IoU thresholds 0.50:0.05:0.95, 101 recall points, maxDets 1/10/100, area ranges
all/small/medium/large (on the annotation's ``area`` field for ground truth, box area for detections),
crowd regions (``iscrowd=1``) ignored and matched by intersection over the detection's area, a detection
matched to an ignored ground truth (crowd or out of the area range) counts neither way, detections sorted by
score with a stable sort. ``category_ids`` restricts the evaluation to some classes (e.g. person + vehicles).

Detections use COCO result format: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

VOC (``evaluate_voc``): per class, detections in score order are true positives when their best-IoU ground
truth (IoU >= 0.5) is not yet taken; crowd boxes act as VOC "difficult" ones (ignored); AP is the mean of the
highest precision at recall >= 0, 0.1, ..., 1.0 (the VOC2007 11-point metric).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# darknet's coco.names spellings that differ from COCO's category names: one table, shared with the class filter
from pipeline.detect.detectors.yolo_decode import CLASS_ALIASES as NAME_ALIASES

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}

#: COCO category id of each of the 80 darknet / YOLO class indices (COCO ids run 1..90 with gaps).
DARKNET_TO_COCO_ID: tuple[int, ...] = (
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
)
assert len(DARKNET_TO_COCO_ID) == 80

#: handy class groups for ``--classes``
CLASS_GROUPS = {
    "vehicle": ["bicycle", "car", "motorcycle", "bus", "truck"],
    "person+vehicle": ["person", "bicycle", "car", "motorcycle", "bus", "truck"],
}


class EvaluationError(ValueError):
    """Bad annotation file, detections or class filter; the message names what and where."""


# ---- loading and name mapping -----------------------------------------------------------------------


def load_coco(path: str | Path) -> dict:
    """Read and sanity-check a COCO instances JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvaluationError(f"annotations file {path} not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"annotations file {path}: cannot read JSON: {exc}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvaluationError(
                f"annotations file {path}: missing list {key!r} (not a COCO instances file?)"
            )
    for i, ann in enumerate(data["annotations"]):
        bbox = ann.get("bbox")
        if (
            not (isinstance(bbox, list) and len(bbox) == 4)
            or "image_id" not in ann
            or "category_id" not in ann
        ):
            raise EvaluationError(
                f"annotations file {path}: annotations[{i}] needs image_id, category_id, bbox[4]"
            )
    return data


def canonical_name(name: str) -> str:
    n = name.strip().lower()
    return NAME_ALIASES.get(n, n)


def category_ids_for(gt: dict, names: list[str]) -> list[int]:
    """COCO category ids for class names (darknet spellings and groups such as 'vehicle' accepted)."""
    by_name = {canonical_name(c["name"]): int(c["id"]) for c in gt["categories"]}
    ids: list[int] = []
    for raw in names:
        group = CLASS_GROUPS.get(raw.strip().lower())
        # a group keeps those of its members the annotations have; a plain name must exist
        expanded = [n for n in group if canonical_name(n) in by_name] if group else [raw]
        if group is not None and not expanded:
            raise EvaluationError(
                f"--classes: none of group {raw!r} ({', '.join(group)}) is in the annotations"
            )
        for name in expanded:
            key = canonical_name(name)
            if key not in by_name:
                raise EvaluationError(
                    f"--classes: unknown class {name!r}; the annotations have: "
                    + ", ".join(sorted(by_name)[:20])
                    + (", ..." if len(by_name) > 20 else "")
                )
            if by_name[key] not in ids:
                ids.append(by_name[key])
    return ids


def label_to_category_id(gt: dict, labels: list[str]) -> list[int | None]:
    """Category id per detector label: by name (with darknet aliases); for an 80-class model whose names
    do not match, by the darknet class index. ``None`` where a label has no COCO category."""
    by_name = {canonical_name(c["name"]): int(c["id"]) for c in gt["categories"]}
    out = [by_name.get(canonical_name(lab)) for lab in labels]
    if len(labels) == 80:
        out = [cid if cid is not None else DARKNET_TO_COCO_ID[i] for i, cid in enumerate(out)]
    return out


# ---- COCO mAP ---------------------------------------------------------------------------------------


@dataclass
class CocoResult:
    """``stats`` holds the 12 COCOeval summary numbers by name (-1 where undefined, as pycocotools does);
    ``per_class`` AP@[.5:.95] and AP@.5 per category name; ``precision`` is pycocotools' array
    [T, R, K, A, M]."""

    stats: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    precision: np.ndarray | None = None
    recall: np.ndarray | None = None
    category_ids: list[int] = field(default_factory=list)

    STAT_NAMES = (
        "AP",
        "AP50",
        "AP75",
        "AP_small",
        "AP_medium",
        "AP_large",
        "AR1",
        "AR10",
        "AR100",
        "AR_small",
        "AR_medium",
        "AR_large",
    )

    def as_list(self) -> list[float]:
        return [self.stats[n] for n in self.STAT_NAMES]


def _xywh_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU (D, G) of [x, y, w, h] boxes; for crowd ground truth the union is the detection's own area."""
    dx2, dy2 = dt[:, 0] + dt[:, 2], dt[:, 1] + dt[:, 3]
    gx2, gy2 = gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]
    iw = np.clip(np.minimum(dx2[:, None], gx2[None]) - np.maximum(dt[:, 0:1], gt[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(dy2[:, None], gy2[None]) - np.maximum(dt[:, 1:2], gt[None, :, 1]), 0, None)
    inter = iw * ih
    da = (dt[:, 2] * dt[:, 3])[:, None]
    ga = (gt[:, 2] * gt[:, 3])[None, :]
    union = np.where(crowd[None, :], da, da + ga - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching at every IoU threshold (pycocotools' evaluateImg loop).

    Ground truth must be ordered non-ignored first. Returns dt_matched (T, D) bool and dt_ignored (T, D)
    bool (matched to an ignored ground truth)."""
    t_count, (d_count, g_count) = len(IOU_THRESHOLDS), ious.shape
    dt_matched = np.zeros((t_count, d_count), bool)
    dt_ignored = np.zeros((t_count, d_count), bool)
    if d_count == 0 or g_count == 0:
        return dt_matched, dt_ignored
    real = ~gt_ignore
    for ti, thr in enumerate(IOU_THRESHOLDS):
        gt_taken = np.zeros(g_count, bool)
        floor = min(thr, 1 - 1e-10)
        for di in range(d_count):
            row = ious[di]
            eligible = (~gt_taken | crowd) & (row >= floor)
            # pycocotools scans ground truth in order keeping the best IoU so far (a tie moves to the later
            # one) and stops at the ignored ones once it holds a real match: so real ones win if any qualify
            group = eligible & real if (eligible & real).any() else eligible
            if not group.any():
                continue
            masked = np.where(group, row, -np.inf)
            m = g_count - 1 - int(np.argmax(masked[::-1]))
            dt_matched[ti, di] = True
            dt_ignored[ti, di] = gt_ignore[m]
            gt_taken[m] = True
    return dt_matched, dt_ignored


def evaluate_coco(
    gt: dict,
    detections: list[dict],
    category_ids: list[int] | None = None,
    image_ids: list[int] | None = None,
) -> CocoResult:
    """COCO bbox evaluation of ``detections`` against ``gt`` (a loaded COCO dict); see the module doc."""
    known_images = {int(im["id"]) for im in gt["images"]}
    img_ids = sorted(known_images if image_ids is None else {int(i) for i in image_ids})
    all_cats = sorted(int(c["id"]) for c in gt["categories"])
    cat_ids = sorted(all_cats if category_ids is None else {int(c) for c in category_ids})
    unknown = set(cat_ids) - set(all_cats)
    if unknown:
        raise EvaluationError(f"category ids {sorted(unknown)} are not in the annotations")
    img_set, cat_set = set(img_ids), set(cat_ids)

    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    dts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for ann in gt["annotations"]:
        key = (int(ann["image_id"]), int(ann["category_id"]))
        if key[0] in img_set and key[1] in cat_set:
            gts[key].append(ann)
    for i, det in enumerate(detections):
        try:
            key = (int(det["image_id"]), int(det["category_id"]))
            bbox = [float(v) for v in det["bbox"]]
            score = float(det["score"])
        except (KeyError, TypeError, ValueError):
            raise EvaluationError(
                f"detections[{i}]: needs image_id, category_id, bbox [x, y, w, h] and score, got {det!r}"
            ) from None
        if len(bbox) != 4:
            raise EvaluationError(f"detections[{i}]: bbox must have 4 numbers, got {det['bbox']!r}")
        if key[0] not in known_images:
            raise EvaluationError(f"detections[{i}]: image_id {key[0]} is not in the annotations")
        if key[0] in img_set and key[1] in cat_set:
            dts[key].append({"bbox": bbox, "score": score})

    max_det = MAX_DETS[-1]
    area_names = list(AREA_RANGES)
    t_count, r_count = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    k_count, a_count, m_count = len(cat_ids), len(area_names), len(MAX_DETS)
    precision = -np.ones((t_count, r_count, k_count, a_count, m_count))
    recall = -np.ones((t_count, k_count, a_count, m_count))

    for k, cat in enumerate(cat_ids):
        # per image: evaluate once per area range (pycocotools' evalImgs), then accumulate
        per_area: list[list[tuple]] = [[] for _ in area_names]
        for img in img_ids:
            g = gts.get((img, cat), [])
            d = dts.get((img, cat), [])
            if not g and not d:
                continue
            d_scores = np.array([x["score"] for x in d], float)
            d_order = np.argsort(-d_scores, kind="mergesort")[:max_det]
            d_boxes = np.array([d[i]["bbox"] for i in d_order], float).reshape(-1, 4)
            d_scores = d_scores[d_order]
            d_area = d_boxes[:, 2] * d_boxes[:, 3]
            g_boxes = np.array([x["bbox"] for x in g], float).reshape(-1, 4)
            g_crowd = np.array([bool(x.get("iscrowd", 0)) for x in g], bool)
            g_area = np.array([float(x.get("area", x["bbox"][2] * x["bbox"][3])) for x in g], float)
            ious_all = (
                _xywh_iou(d_boxes, g_boxes, g_crowd)
                if len(d) and len(g)
                else np.zeros((len(d_order), len(g)))
            )
            for a, name in enumerate(area_names):
                lo, hi = AREA_RANGES[name]
                g_ignore = g_crowd | (g_area < lo) | (g_area > hi)
                g_order = np.argsort(g_ignore, kind="mergesort")
                matched, ignored = _match(ious_all[:, g_order], g_ignore[g_order], g_crowd[g_order])
                out_of_range = (d_area < lo) | (d_area > hi)
                ignored = ignored | (~matched & out_of_range[None, :])
                per_area[a].append((d_scores, matched, ignored, int((~g_ignore).sum())))
        for a in range(a_count):
            entries = per_area[a]
            if not entries:
                continue
            n_pos = sum(e[3] for e in entries)
            if n_pos == 0:
                continue
            for m, md in enumerate(MAX_DETS):
                scores = np.concatenate([e[0][:md] for e in entries])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e[1][:, :md] for e in entries], axis=1)[:, order]
                ignored = np.concatenate([e[2][:, :md] for e in entries], axis=1)[:, order]
                tps = np.cumsum(matched & ~ignored, axis=1).astype(float)
                fps = np.cumsum(~matched & ~ignored, axis=1).astype(float)
                for t in range(t_count):
                    tp, fp = tps[t], fps[t]
                    nd = len(tp)
                    rc = tp / n_pos
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[t, k, a, m] = rc[-1] if nd else 0.0
                    # precision envelope: non-increasing from the right
                    pr = np.maximum.accumulate(pr[::-1])[::-1] if nd else pr
                    q = np.zeros(r_count)
                    idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                    valid = idx < nd
                    q[valid] = pr[idx[valid]]
                    precision[t, :, k, a, m] = q

    def _summ(ap: bool, iou: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        a = area_names.index(area)
        m = MAX_DETS.index(max_dets)
        if ap:
            s = precision[:, :, :, a, m]
            if iou is not None:
                s = s[np.isclose(IOU_THRESHOLDS, iou)]
        else:
            s = recall[:, :, a, m]
            if iou is not None:
                s = s[np.isclose(IOU_THRESHOLDS, iou)]
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    stats = {
        "AP": _summ(True),
        "AP50": _summ(True, 0.5),
        "AP75": _summ(True, 0.75),
        "AP_small": _summ(True, area="small"),
        "AP_medium": _summ(True, area="medium"),
        "AP_large": _summ(True, area="large"),
        "AR1": _summ(False, max_dets=1),
        "AR10": _summ(False, max_dets=10),
        "AR100": _summ(False),
        "AR_small": _summ(False, area="small"),
        "AR_medium": _summ(False, area="medium"),
        "AR_large": _summ(False, area="large"),
    }
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    per_class = {}
    for k, cat in enumerate(cat_ids):
        p_all = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        per_class[names[cat]] = {
            "AP": float(np.mean(p_all[p_all > -1])) if (p_all > -1).any() else -1.0,
            "AP50": float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else -1.0,
            "gt": sum(1 for img in img_ids for x in gts.get((img, cat), []) if not x.get("iscrowd", 0)),
        }
    return CocoResult(stats, per_class, precision, recall, cat_ids)


# ---- VOC 11-point AP --------------------------------------------------------------------------------


def voc_ap_11(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over r in {0, 0.1, ..., 1} of the best precision at recall >= r."""
    recall = np.asarray(recall, float)
    precision = np.asarray(precision, float)
    total = 0.0
    for r in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= r - 1e-12]
        total += float(above.max()) if above.size else 0.0
    return total / 11.0


def evaluate_voc(
    gt: dict, detections: list[dict], category_ids: list[int] | None = None, iou_threshold: float = 0.5
) -> dict[str, float]:
    """VOC 11-point AP per category name plus ``"mAP"`` (mean over categories that have ground truth)."""
    cat_ids = sorted(
        {int(c["id"]) for c in gt["categories"]} if category_ids is None else {int(c) for c in category_ids}
    )
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    out: dict[str, float] = {}
    for cat in cat_ids:
        boxes: dict[int, np.ndarray] = {}
        difficult: dict[int, np.ndarray] = {}
        grouped: dict[int, list] = defaultdict(list)
        for ann in gt["annotations"]:
            if int(ann["category_id"]) == cat:
                grouped[int(ann["image_id"])].append(ann)
        n_pos = 0
        for img, anns in grouped.items():
            b = np.array([a["bbox"] for a in anns], float).reshape(-1, 4)
            boxes[img] = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
            difficult[img] = np.array([bool(a.get("iscrowd", 0)) for a in anns])
            n_pos += int((~difficult[img]).sum())
        if n_pos == 0:
            continue
        dets = [d for d in detections if int(d["category_id"]) == cat]
        dets.sort(key=lambda d: -float(d["score"]))  # stable: equal scores keep input order
        taken = {img: np.zeros(len(b), bool) for img, b in boxes.items()}
        tp = np.zeros(len(dets))
        fp = np.zeros(len(dets))
        for i, d in enumerate(dets):
            img = int(d["image_id"])
            x, y, w, h = (float(v) for v in d["bbox"])
            g = boxes.get(img)
            if g is None or not len(g):
                fp[i] = 1
                continue
            iw = np.clip(np.minimum(x + w, g[:, 2]) - np.maximum(x, g[:, 0]), 0, None)
            ih = np.clip(np.minimum(y + h, g[:, 3]) - np.maximum(y, g[:, 1]), 0, None)
            inter = iw * ih
            union = w * h + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
            j = int(np.argmax(iou))
            if iou[j] >= iou_threshold:
                if difficult[img][j]:
                    continue  # neither TP nor FP
                if not taken[img][j]:
                    taken[img][j] = True
                    tp[i] = 1
                else:
                    fp[i] = 1
            else:
                fp[i] = 1
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = ctp / n_pos
        prec = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
        out[names[cat]] = voc_ap_11(rec, prec)
    out["mAP"] = float(np.mean(list(out.values()))) if out else -1.0
    return out


# ---- formatting -------------------------------------------------------------------------------------


def format_coco_table(result: CocoResult, voc: dict[str, float] | None = None) -> str:
    """Markdown: the 12 summary numbers, then AP per class (with VOC AP when given)."""
    lines = ["| metric | value |", "|---|---|"]
    for name in CocoResult.STAT_NAMES:
        lines.append(f"| {name} | {result.stats[name]:.4f} |")
    if voc is not None:
        lines.append(f"| VOC07 11-pt mAP@0.5 | {voc.get('mAP', -1.0):.4f} |")
    lines += [
        "",
        "| class | GT boxes | AP@[.5:.95] | AP@.5 |" + (" VOC11 AP@.5 |" if voc else ""),
        "|---|---|---|---|" + ("---|" if voc else ""),
    ]
    for name, row in result.per_class.items():
        if row["gt"] == 0:
            continue
        extra = f" {voc[name]:.4f} |" if voc and name in voc else (" - |" if voc else "")
        lines.append(f"| {name} | {row['gt']} | {row['AP']:.4f} | {row['AP50']:.4f} |{extra}")
    return "\n".join(lines)
