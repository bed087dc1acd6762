"""Face embedding benchmark: speed of our dlib-ResNet port, chip fidelity, verification accuracy.

Prints markdown tables:

1. ms per face: dlib's own ``face_recognition_model_v1`` vs our port (torch, onnxruntime) at batch 1 and 8.
2. Alignment: our chips vs dlib's ``get_face_chip`` on the faces of shared/data/faces/celeb5, for dlib's
   5 points (reproduction of dlib's chip code) and for MTCNN's 5 points (our MTCNN template): pixel error
   and embedding distance to dlib's own descriptor of dlib's chip. Also re-fits the MTCNN template.
3. Verification on celeb5, all pairs (one face per photo): accuracy at dlib's 0.6 threshold, best threshold,
   ROC AUC, for dlib's full pipeline and for ours (MTCNN landmarks -> our chip -> our net).

Run: ``.venv/bin/python benchmarks/bench_face_embedding.py [--data /work/shared/data] [--repeats 20]``.
Needs ../shared/data (celeb5) and dlib (dlib-bin). CPU timings; mind other load on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.model_store import get_model_files  # noqa: E402
from pipeline.analyze.faces.embedder import FaceEmbedder  # noqa: E402
from pipeline.models import align  # noqa: E402


def load_celeb5(root: Path) -> list[tuple[str, str, np.ndarray]]:
    """(identity, "split/file name", RGB image) for every photo under root/faces/celeb5/{train,val}/<identity>/."""
    out = []
    for path in sorted((root / "faces" / "celeb5").glob("*/*/*.jpg")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read image {path}")
        out.append(
            (path.parent.name, f"{path.parent.parent.name}/{path.name}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        )
    if not out:
        raise SystemExit(f"no celeb5 photos under {root / 'faces' / 'celeb5'}")
    return out


def largest(items: list, key) -> object | None:
    return max(items, key=key) if items else None


def collect_faces(photos, dlib, det, sp, mtcnn):
    """Per photo: the largest dlib face (5 points, full_object_detection) and the MTCNN face matching it."""
    faces = []
    for ident, name, rgb in photos:
        rects = list(det(rgb, 1))
        rect = largest(rects, key=lambda r: r.area())
        if rect is None:
            faces.append((ident, name, rgb, None, None, None))
            continue
        shape = sp(rgb, rect)
        d5 = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        res = mtcnn.detect([np.ascontiguousarray(rgb[..., ::-1])])[0]
        mt = None
        if len(res.boxes):
            eyes_d = np.array([(d5[2] + d5[3]) / 2, (d5[0] + d5[1]) / 2])  # image-left, image-right eye
            err = np.linalg.norm(res.landmarks[:, :2] - eyes_d[None], axis=2).mean(1)
            j = int(np.argmin(err))
            if err[j] < 0.5 * np.linalg.norm(eyes_d[1] - eyes_d[0]):
                mt = res.landmarks[j].astype(np.float64)
        faces.append((ident, name, rgb, shape, d5, mt))
    return faces


def verification(emb: np.ndarray, ids: list[str]) -> dict[str, float]:
    n = len(ids)
    i, j = np.triu_indices(n, 1)
    dist = np.linalg.norm(emb[i] - emb[j], axis=1)
    same = np.array([ids[a] == ids[b] for a, b in zip(i, j, strict=True)])
    acc06 = float(((dist < 0.6) == same).mean())
    thr = np.unique(dist)
    accs = [((dist < t + 1e-9) == same).mean() for t in thr]
    k = int(np.argmax(accs))
    # ROC AUC = P(dist_same < dist_diff), ties half
    ds, dd = np.sort(dist[same]), np.sort(dist[~same])
    lo = np.searchsorted(dd, ds, side="left")
    hi = np.searchsorted(dd, ds, side="right")
    auc = float(((len(dd) - hi) + 0.5 * (hi - lo)).sum() / (len(ds) * len(dd)))
    return {
        "pairs": int(len(dist)),
        "same": int(same.sum()),
        "acc@0.6": acc06,
        "best_thr": float(thr[k]),
        "best_acc": float(accs[k]),
        "auc": auc,
        "tar@0.6": float((dist[same] < 0.6).mean()),
        "far@0.6": float((dist[~same] < 0.6).mean()),
    }


def time_per_face(fn, chips: np.ndarray, batch: int, repeats: int) -> float:
    """Median ms per face of ``fn(chips[:batch])`` after two warm-up calls."""
    return time_interleaved({"x": fn}, chips, batch, repeats)["x"][1]


def time_interleaved(
    fns: dict, chips: np.ndarray, batch: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """(min, median) ms per face for each callable, the callables taking turns so load hits them alike."""
    for fn in fns.values():
        fn(chips[:batch])
        fn(chips[:batch])
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(chips[:batch])
            times[name].append(1000.0 * (time.perf_counter() - t) / batch)
    return {k: (float(np.min(v)), float(np.median(v))) for k, v in times.items()}


def _one_thread(fn):
    import torch

    def run(x):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(x)
        finally:
            torch.set_num_threads(before)

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch / onnxruntime intra-op threads")
    args = ap.parse_args()

    import dlib

    from pipeline.detect.detectors.mtcnn import build_mtcnn

    files = get_model_files("dlib-face-resnet")
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(files["landmarks5"]))
    fr = dlib.face_recognition_model_v1(str(files["embedding"]))
    mtcnn = build_mtcnn()
    photos = load_celeb5(args.data)
    t0 = time.perf_counter()
    faces = collect_faces(photos, dlib, det, sp, mtcnn)
    found = [f for f in faces if f[3] is not None and f[5] is not None]
    print(
        f"celeb5: {len(photos)} photos; dlib found a face in {sum(f[3] is not None for f in faces)}, "
        f"MTCNN matched {len(found)} of those ({time.perf_counter() - t0:.0f} s)\n"
    )

    # ---- template fit on the train photos (the shipped align.MTCNN_TEMPLATE was fitted on all of them) ----
    train = [f for f in found if f[1].startswith("train/")]
    val = [f for f in found if not f[1].startswith("train/")]
    refit = align.fit_template([(f[4], f[5]) for f in train])
    print(f"MTCNN template refit on the {len(train)} celeb5 train faces (unit square, dlib frame):")
    print("```\n" + np.array2string(refit, precision=4, suppress_small=True) + "\n```\n")

    torch_emb = FaceEmbedder(backend="torch", threads=args.threads)
    ort_emb = FaceEmbedder(backend="onnxruntime", threads=args.threads)

    # ---- alignment fidelity ----
    dlib_chips = np.stack([dlib.get_face_chip(f[2], f[3], size=150, padding=0.25) for f in found])
    dlib_desc = np.stack([np.array(fr.compute_face_descriptor(c)) for c in dlib_chips])
    is_val = np.array([not f[1].startswith("train/") for f in found])
    rows = []
    for label, template, weights, idx, subset in [
        ("dlib 5 points, dlib template (all faces)", "dlib5", None, 4, None),
        ("MTCNN 5 points, shipped template, eye-weighted fit (all faces)", "mtcnn", None, 5, None),
        ("MTCNN 5 points, shipped template, equal weights (all faces)", "mtcnn", np.ones(5), 5, None),
        (
            "MTCNN 5 points, template refit on train, eye-weighted (val faces)",
            refit,
            align.MTCNN_WEIGHTS,
            5,
            is_val,
        ),
    ]:
        sel = np.ones(len(found), bool) if subset is None else subset
        chips = np.stack(
            [
                align.align_faces(f[2], f[idx][None], template, weights=weights)[0]
                for f, s in zip(found, sel, strict=True)
                if s
            ]
        )
        err = np.abs(chips.astype(np.int16) - dlib_chips[sel].astype(np.int16))
        d = np.linalg.norm(torch_emb.embed_chips(chips) - dlib_desc[sel], axis=1)
        rows.append(
            f"| {label} | {len(chips)} | {err.mean():.2f} | {d.mean():.4f} | {np.median(d):.4f} | {d.max():.4f} |"
        )
    print(
        f"Chips vs dlib.get_face_chip (150 px, padding 0.25) on celeb5 ({len(val)} of the faces are val):\n"
    )
    print(
        "| landmarks / template | faces | mean abs px err (0-255) | emb dist to dlib: mean | median | max |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows) + "\n")

    # ---- parity of the nets on dlib's chips ----
    ours = torch_emb.embed_chips(dlib_chips)
    ours_ort = ort_emb.embed_chips(dlib_chips)
    print(
        f"Net parity on dlib's chips ({len(found)} faces): max |torch - dlib| = "
        f"{np.abs(ours - dlib_desc).max():.2e}, max |onnxruntime - dlib| = {np.abs(ours_ort - dlib_desc).max():.2e}\n"
    )

    # ---- verification ----
    ids = [f[0] for f in found]
    mt_chips = np.stack([align.align_faces(f[2], f[5][None])[0] for f in found])
    results = {
        "dlib (HOG det + 5-pt shape predictor + dlib net)": verification(dlib_desc, ids),
        "ours (MTCNN landmarks + our align + our net, torch)": verification(
            torch_emb.embed_chips(mt_chips), ids
        ),
    }
    print(f"Verification, celeb5 all pairs ({len(found)} faces, 5 identities):\n")
    print("| pipeline | pairs (same) | acc @0.6 | TAR @0.6 | FAR @0.6 | best thr | best acc | ROC AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['pairs']} ({r['same']}) | {r['acc@0.6']:.3f} | {r['tar@0.6']:.3f} | "
            f"{r['far@0.6']:.3f} | {r['best_thr']:.3f} | {r['best_acc']:.3f} | {r['auc']:.4f} |"
        )
    print()

    # ---- speed ----
    chips8 = np.ascontiguousarray(np.resize(dlib_chips, (8, 150, 150, 3)))
    impls = {
        "dlib face_recognition_model_v1": lambda c: fr.compute_face_descriptor(list(c)),
        "ours, torch (affine folded, channels-last)": torch_emb.embed_chips,
        "ours, torch, 1 thread": _one_thread(torch_emb.embed_chips),
        "ours, onnxruntime": ort_emb.embed_chips,
    }
    res = {b: time_interleaved(impls, chips8, b, args.repeats) for b in (1, 8)}
    print(
        f"Speed, ms per face over {args.repeats} interleaved runs (150x150 chips, no jitter): min / median\n"
    )
    print("| implementation | batch 1 | batch 8 | speed-up vs dlib (min, b1 / b8) |")
    print("|---|---|---|---|")
    ref1, ref8 = res[1]["dlib face_recognition_model_v1"][0], res[8]["dlib face_recognition_model_v1"][0]
    for name in impls:
        (m1, d1), (m8, d8) = res[1][name], res[8][name]
        print(f"| {name} | {m1:.1f} / {d1:.1f} | {m8:.1f} / {d8:.1f} | {ref1 / m1:.1f}x / {ref8 / m8:.1f}x |")
    img = found[0][2]
    lm = np.repeat(found[0][5][None], 8, axis=0)
    a8 = time_per_face(lambda _: align.align_faces(img, lm), chips8, 8, args.repeats)
    print(f"\nAlignment (chip extraction from the photo, numpy): {a8:.2f} ms per face (median).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
