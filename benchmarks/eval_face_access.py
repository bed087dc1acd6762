"""Face access evaluation on real photos: verification ROC, threshold calibration, FAR/FRR with and without
the k-frame vote, and ms per face.

    python benchmarks/eval_face_access.py [--data /work/shared/data/faces] [--k 3]

Data: celeb5 (5 identities; train = gallery, val = probes) + fr_examples (5 identities; train = gallery,
test = probes, named after who is in them). Pipeline: MTCNN -> 5-point alignment -> dlib ResNet (the
product's FaceEngine); identity = smallest mean distance to a person's templates (pipeline.analyze.faces.matcher).

- Threshold calibration on the GALLERY only (leave-one-image-out within train): the largest threshold whose
  false-accept rate (probe vs another person's templates) is <= --target-far.
- FRR (probes): a genuine probe is rejected when its best person is not its own or is farther than the
  threshold. FAR (probes, open set): each probe is tried against a gallery WITHOUT its own identity, as an
  impostor would be; accepted = some person within the threshold.
- k-frame vote (simulated): k different probe photos of one identity form an attempt (all k-combinations);
  granted only when all k name the same person within the threshold. Real video frames are far more alike
  than different photos, so the vote's effect on live video is smaller than shown here.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.analyze.faces.enroll import FaceEngine
from pipeline.analyze.faces.matcher import Matcher
from pipeline.analyze.faces.quality import enrollment_problem
from pipeline.config.faces import FacesConfig

FR_TEST = {
    "alex_lacamoire1.jpg": {"alex_lacamoire"},
    "johnsnow_test1.jpg": {"kit_harington"},
    "obama1.jpg": {"obama"},
    "kit_with_rose.jpg": {"kit_harington", "rose_leslie"},
    "obama_and_biden.jpg": {"obama", "biden"},
}


def embed_dir(engine: FaceEngine, files: list[tuple[Path, set[str]]], all_faces: bool, timing: dict) -> list:
    """[(file, true identities, embedding)] - the largest face per photo, or every face."""
    out = []
    for path, ids in files:
        img = cv2.imread(str(path))
        t0 = time.perf_counter()
        dets = engine.detect(img)
        t1 = time.perf_counter()
        timing["detect_ms"].append((t1 - t0) * 1000)
        if len(dets) == 0:
            timing["no_face"].append(path.name)
            continue
        if not all_faces:
            areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
            dets = dets.select(np.array([int(np.argmax(areas))]))
        embs = engine.embed(img, dets)
        timing["embed_ms"].append((time.perf_counter() - t1) * 1000 / len(dets))
        timing["quality_rejects"] += enrollment_problem(img, dets.boxes[:1], 60, 40) is not None
        for e in embs:
            out.append((path.name, ids, e))
    return out


def load(data: Path, engine: FaceEngine, timing: dict):
    gallery_files, probe_files = [], []
    for split, dest in (("train", gallery_files), ("val", probe_files)):
        for d in sorted((data / "celeb5" / split).iterdir()):
            dest += [(f, {d.name}) for f in sorted(d.iterdir())]
    for d in sorted((data / "fr_examples" / "train").iterdir()):
        gallery_files += [(f, {d.name}) for f in sorted(d.iterdir())]
    gallery = embed_dir(engine, gallery_files, False, timing)
    probes = embed_dir(engine, probe_files, False, timing)
    fr = [(data / "fr_examples" / "test" / n, ids) for n, ids in FR_TEST.items()]
    probes += [p for p in embed_dir(engine, fr, True, timing)]
    return gallery, probes


def templates_of(rows) -> dict[str, np.ndarray]:
    t: dict[str, list] = {}
    for _, ids, e in rows:
        t.setdefault(next(iter(ids)), []).append(e)
    return {k: np.stack(v) for k, v in t.items()}


def calibrate(gallery, target_far: float) -> tuple[float, list[float], list[float]]:
    """Leave-one-image-out on the gallery. Genuine score: mean distance to the person's other templates.
    Impostor score: what an impostor meets in the open set, the smallest mean distance to any OTHER person.
    Threshold: the largest (3 decimals) that accepts at most ``target_far`` of the impostor scores."""
    tpl = templates_of(gallery)
    gen, imp = [], []
    for i, (_, ids, e) in enumerate(gallery):
        me = next(iter(ids))
        own = [g[2] for j, g in enumerate(gallery) if j != i and me in g[1]]
        if own:
            gen.append(float(np.linalg.norm(np.stack(own) - e, axis=1).mean()))
        imp.append(min(float(np.linalg.norm(t - e, axis=1).mean()) for n, t in tpl.items() if n != me))
    imp_sorted = np.sort(imp)
    allowed = int(np.floor(target_far * len(imp_sorted)))  # impostor scores that may fall within
    thr = imp_sorted[allowed] if allowed < len(imp_sorted) else imp_sorted[-1] + 1e-3
    return float(np.floor((thr - 1e-9) * 1000) / 1000), gen, imp


def decide(matcher: Matcher, e: np.ndarray) -> tuple[str | None, float]:
    m = matcher.identify(e)
    return m.identity, m.distance


def rates(gallery, probes, thr: float, k: int) -> dict:
    tpl = templates_of(gallery)
    full = Matcher(tpl, thr)
    # genuine: single frame
    gen_ok = [decide(full, e)[0] in ids for _, ids, e in probes]
    # impostor: gallery without the probe's identities
    loo = {
        frozenset(ids): Matcher({n: t for n, t in tpl.items() if n not in ids}, thr) for _, ids, _ in probes
    }
    imp_acc = [decide(loo[frozenset(ids)], e)[0] is not None for _, ids, e in probes]
    # k-frame votes over single-identity probes
    by_id: dict[str, list] = {}
    for _, ids, e in probes:
        if len(ids) == 1:
            by_id.setdefault(next(iter(ids)), []).append(e)
    gk, ik = [], []
    for ident, embs in by_id.items():
        imp_m = Matcher({n: t for n, t in tpl.items() if n != ident}, thr)
        for combo in itertools.combinations(range(len(embs)), k):
            names = [decide(full, embs[c])[0] for c in combo]
            gk.append(all(n == ident for n in names))
            inames = [decide(imp_m, embs[c])[0] for c in combo]
            ik.append(inames[0] is not None and all(n == inames[0] for n in inames))
    return {
        "frr1": 1 - np.mean(gen_ok),
        "far1": np.mean(imp_acc),
        "n1": len(probes),
        "frrk": 1 - np.mean(gk) if gk else float("nan"),
        "fark": np.mean(ik) if ik else float("nan"),
        "nk": len(gk),
    }


def pair_roc(rows, thresholds):
    """All image pairs (gallery + probes, single-identity photos): verification accuracy / TAR / FAR."""
    rows = [r for r in rows if len(r[1]) == 1]
    e = np.stack([r[2] for r in rows])
    ids = [next(iter(r[1])) for r in rows]
    d = np.linalg.norm(e[:, None] - e[None], axis=2)
    iu = np.triu_indices(len(rows), 1)
    same = np.array([ids[i] == ids[j] for i, j in zip(*iu, strict=True)])
    dist = d[iu]
    out = []
    for t in thresholds:
        acc = np.mean((dist <= t) == same)
        out.append((t, float(np.mean(dist[same] <= t)), float(np.mean(dist[~same] <= t)), float(acc)))
    # AUC by ranking
    order = np.argsort(dist)
    tp = np.cumsum(same[order]) / same.sum()
    fp = np.cumsum(~same[order]) / (~same).sum()
    auc = float(np.trapezoid(tp, fp))
    best = max(out, key=lambda r: r[3])
    return out, auc, int(same.sum()), int((~same).sum()), best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/faces", type=Path)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--target-far", type=float, default=0.01)
    args = ap.parse_args()
    engine = FaceEngine.from_config(FacesConfig(detector_min_face_px=20))
    timing = {"detect_ms": [], "embed_ms": [], "no_face": [], "quality_rejects": 0}
    gallery, probes = load(args.data, engine, timing)
    thr, gen, imp = calibrate(gallery, args.target_far)
    print(
        f"## Face access evaluation (celeb5 + fr_examples, {len(gallery)} gallery templates of "
        f"{len(templates_of(gallery))} people, {len(probes)} probe faces)\n"
    )
    print(
        f"Photos with no face found: {len(timing['no_face'])} {timing['no_face']}; "
        f"photos the enrollment quality check (60 px, sharpness 40) would reject: {timing['quality_rejects']}\n"
    )
    print(
        f"Calibrated threshold (gallery leave-one-out, FAR <= {args.target_far:.0%}): **{thr}** "
        f"(gallery genuine mean distance {np.mean(gen):.3f}, impostor {np.mean(imp):.3f})\n"
    )
    roc, auc, ns, nd, best = pair_roc(gallery + probes, [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, thr])
    print(f"### Verification, all photo pairs ({ns} same-person, {nd} different-person), ROC AUC {auc:.4f}\n")
    print("| threshold | TAR | FAR | accuracy |\n|---|---|---|---|")
    for t, tar, far, acc in sorted(set(roc)):
        print(f"| {t:.3f} | {tar:.3f} | {far:.4f} | {acc:.4f} |")
    print(f"\nBest pair accuracy {best[3]:.4f} at {best[0]}.\n")
    print(
        f"### Access decisions on probes (FRR: genuine refused; FAR: open-set impostor accepted; k = {args.k})\n"
    )
    print(
        f"| threshold | FRR 1 frame | FAR 1 frame | FRR {args.k}-vote | FAR {args.k}-vote | probes / {args.k}-attempts |"
    )
    print("|---|---|---|---|---|---|")
    for t in sorted({0.45, 0.5, thr, 0.55, 0.6}):
        r = rates(gallery, probes, t, args.k)
        print(
            f"| {t:.3f} | {r['frr1']:.3f} | {r['far1']:.3f} | {r['frrk']:.3f} | {r['fark']:.3f} | {r['n1']} / {r['nk']} |"
        )
    det, emb = np.array(timing["detect_ms"]), np.array(timing["embed_ms"])
    print("\n### Speed (CPU, torch backend, 1 face per call)\n")
    print("| step | median ms | p90 ms |\n|---|---|---|")
    print(
        f"| MTCNN detect (per photo, web-size images) | {np.median(det):.1f} | {np.percentile(det, 90):.1f} |"
    )
    print(f"| align + embed (per face) | {np.median(emb):.1f} | {np.percentile(emb, 90):.1f} |")


if __name__ == "__main__":
    main()
