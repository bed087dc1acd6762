"""Open-set evaluation of the face matcher at the threshold `faces calibrate` picks (held-apart identities).

    python benchmarks/eval_open_set.py [--data ../shared/data/faces] [--folds 4] [--k 3] [--cache FILE]

Data: every real face photo in ``--data``: celeb5 (5 people, train+val), extended_yale_b_cropped (27 people,
12 photos each under very different lighting) and fr_examples (5 people with 1-3 photos: impostors only).
One embedding per photo (the largest face; MTCNN -> 5-point alignment -> dlib ResNet, the product's
FaceEngine). Photos where MTCNN finds no face are retried with a 40 % grey border (the Yale crops are tight).

Per fold (identities with >= 6 photos split into ``--folds`` groups; fold f's group is never enrolled):
- enrolled: the other groups' people, ``--enroll`` photos each (a seeded random pick) -> the gallery;
- calibration: `faces calibrate`'s default, available on a fresh install: leave-one-identity-out over that
  gallery (+ leave-one-out genuine attempts) -> threshold (target FAR ``--far``), with the configured margin;
- held apart, never seen by calibration: impostor attempts = every photo of fold f's people and every
  fr_examples photo, against the whole gallery; genuine attempts = the enrolled people's other photos.
- k-frame vote: k photos of one impostor (sliding windows over a seeded random order) presented as frames of
  one tracked face to the real DoorPolicy (every enrolled person allowed, liveness off: photos), counting
  grants; the same for genuine people. Different photos of one person vary far more than video frames do.

Prints markdown tables (sums over folds), the per-fold thresholds, and per fold how far the closest held-apart
impostor stayed above the calibrated threshold (``--safety``: calibrate's safety margin; 0 shows without).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.analyze.doors.policy import DoorPolicy, FaceVote
from pipeline.analyze.faces import calibrate as cal
from pipeline.analyze.faces.matcher import Match, decide
from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig

SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm"}


def collect(data: Path) -> list[tuple[str, str, Path]]:
    """(dataset, identity, photo) for every photo with one known person."""
    out = []
    for p in sorted((data / "celeb5").glob("*/*/*")):
        out.append(("celeb5", p.parent.name, p))
    for p in sorted((data / "extended_yale_b_cropped").glob("*/*")):
        out.append(("yale", p.parent.name, p))
    for p in sorted((data / "fr_examples" / "train").glob("*/*")):
        out.append(("fr", p.parent.name, p))
    fr_test = {
        "alex_lacamoire1.jpg": "alex_lacamoire",
        "johnsnow_test1.jpg": "kit_harington",
        "obama1.jpg": "obama",
    }
    for name, who in fr_test.items():
        out.append(("fr", who, data / "fr_examples" / "test" / name))
    return [o for o in out if o[2].suffix.lower() in SUFFIXES]


def embed_all(photos: list[tuple[str, str, Path]], cache: Path) -> dict[str, np.ndarray]:
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    from pipeline.analyze.faces.enroll import FaceEngine
    from pipeline.analyze.faces.identify import largest_face_embedding

    engine = FaceEngine.from_config(FacesConfig())
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for _, _, p in photos:
        img = cv2.imread(str(p))
        emb = largest_face_embedding(engine, img)
        if emb is None:
            pad = int(0.4 * max(img.shape[:2]))
            emb = largest_face_embedding(
                engine,
                cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128)),
            )
        if emb is not None:
            out[str(p)] = emb
    print(f"embedded {len(out)}/{len(photos)} photos in {time.perf_counter() - t0:.0f} s")
    np.savez(cache, **out)
    return out


def vote_grants(policy_door: DoorConfig, allowed: list[str], seqs: list[list[np.ndarray]]) -> tuple[int, int]:
    """(attempts, grants): each sequence = k decided frames of one face."""
    grants = 0
    for i, seq in enumerate(seqs):
        p = DoorPolicy(policy_door.model_copy(update={"allow_people": allowed}))
        t = 1_800_000_000.0 + i * 100
        for j, m in enumerate(seq):
            for d in p.observe(
                t + 0.1 * j,
                [FaceVote(m.identity, m.distance, 100.0, track_id=1, reason=m.reason)],
                now=t + 0.1 * j + 0.01,
            ):
                grants += d["decision"] == "granted"
    return len(seqs), grants


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"))
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--enroll", type=int, default=5)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--far", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--safety",
        type=float,
        default=None,
        help="faces calibrate's safety margin (default: its own; 0: none)",
    )
    ap.add_argument("--cache", default="/tmp/vidpipe_open_set_embeddings.npz")
    ap.add_argument(
        "--compare", type=float, nargs="*", default=[0.5, 0.6], help="fixed thresholds to show beside"
    )
    args = ap.parse_args()
    margin = FacesConfig().margin
    photos = collect(Path(args.data))
    emb = embed_all(photos, Path(args.cache))
    by_id: dict[str, list[np.ndarray]] = {}
    fr_imp: list[np.ndarray] = []
    for ds, who, p in photos:
        e = emb.get(str(p))
        if e is None:
            continue
        (fr_imp if ds == "fr" else by_id.setdefault(f"{ds}/{who}", [])).append(e)
    rng = np.random.default_rng(args.seed)
    ids = sorted(i for i, v in by_id.items() if len(v) >= args.enroll + 1)
    order = rng.permutation(len(ids))
    groups = [[ids[i] for i in order[f :: args.folds]] for f in range(args.folds)]
    door = DoorConfig(
        id="eval",
        cameras=["c"],
        secret="x" * 32,
        k_frames=args.k,
        window_s=5,
        cooldown_s=0,
        liveness="off",
        min_face_px=20,
    )
    rows = {"calibrated": [], **{f"fixed {t}": [] for t in args.compare}}
    votes = {k: [0, 0, 0, 0] for k in rows}  # impostor attempts, grants, genuine attempts, grants
    thresholds = []
    margins: list[float] = []  # calibrate's safety margin per fold
    slack: list[float] = []  # closest held-apart impostor's distance - the calibrated threshold, per fold
    per_ds: dict[str, list[int]] = {}
    n_photos = sum(len(v) for v in by_id.values()) + len(fr_imp)
    for held in groups:
        gallery, genuine = {}, []
        for who in ids:
            if who in held:
                continue
            e = by_id[who]
            pick = rng.permutation(len(e))
            gallery[who] = np.stack([e[i] for i in pick[: args.enroll]])
            genuine += [(who, e[i]) for i in pick[args.enroll :]]
        names = sorted(gallery)
        att = cal.gallery_attempts(gallery)
        chosen = cal.choose_threshold(att, names, margin, args.far, args.safety)
        thresholds.append(
            (chosen.threshold, chosen.impostor_attempts, chosen.genuine_attempts, chosen.far, chosen.frr)
        )
        imp_probes = [e for who in held for e in by_id[who]] + fr_imp
        closest = min(float(np.linalg.norm(gallery[n] - p, axis=1).mean()) for n in names for p in imp_probes)
        slack.append(closest - chosen.threshold)
        margins.append(cal.safety_margin(att) if args.safety is None else args.safety)
        test = cal.merge(
            cal.external_attempts(gallery, np.stack(imp_probes)),
            cal.Attempts(
                np.asarray(
                    [
                        [float(np.linalg.norm(gallery[n] - g, axis=1).mean()) for n in names]
                        for _, g in genuine
                    ]
                ),
                [w for w, _ in genuine],
                np.ones(len(genuine), bool),
            ),
        )
        for who, g in genuine:  # calibrated FRR per data set (celeb5: web photos; yale: studio lighting)
            ds = who.split("/")[0]
            m = decide(
                np.array([float(np.linalg.norm(gallery[n] - g, axis=1).mean()) for n in names]),
                names,
                chosen.threshold,
                margin,
            )
            per_ds.setdefault(ds, [0, 0])
            per_ds[ds][0] += 1
            per_ds[ds][1] += m.identity != who
        imp_seqs_src = [by_id[who] for who in held]
        for label in rows:
            t = chosen.threshold if label == "calibrated" else float(label.split()[1])
            r = cal.rates(test, names, t, margin)
            rows[label].append(r)

            def mk(e: np.ndarray, gallery: dict = gallery, names: list = names, t: float = t) -> Match:
                d = np.array([float(np.linalg.norm(gallery[n] - e, axis=1).mean()) for n in names])
                return decide(d, names, t, margin)

            imp_seqs = []
            for es in imp_seqs_src:
                o = rng.permutation(len(es))
                imp_seqs += [[mk(es[o[j + i]]) for i in range(args.k)] for j in range(len(es) - args.k + 1)]
            gen_by: dict[str, list[np.ndarray]] = {}
            for w, g in genuine:
                gen_by.setdefault(w, []).append(g)
            gen_seqs = [
                [mk(es[j + i]) for i in range(args.k)]
                for es in gen_by.values()
                for j in range(len(es) - args.k + 1)
            ]
            a, g = vote_grants(door, names, imp_seqs)
            ga, gg = vote_grants(door, names, gen_seqs)
            v = votes[label]
            v[0] += a
            v[1] += g
            v[2] += ga
            v[3] += gg
    print(
        f"\n{n_photos} photos embedded ({len(ids)} people with >= {args.enroll + 1} photos in {args.folds} folds, "
        f"{len(fr_imp)} fr_examples impostor photos), margin {margin}, target FAR {args.far}, k = {args.k}\n"
    )
    print(
        "Per fold, calibration (gallery leave-one-identity-out): threshold, impostor / genuine attempts, FAR, FRR"
    )
    for t in thresholds:
        print(f"- {t[0]:.3f}  {t[1]} / {t[2]}  {t[3]:.4f}  {t[4]:.3f}")
    print(
        "\n| threshold | impostor attempts | false accepts | FAR (95 % upper) | genuine attempts | FRR | misidentified | k-vote impostor grants | k-vote genuine grants |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, rs in rows.items():
        ni = sum(r.impostor_attempts for r in rs)
        fa = sum(round(r.far * r.impostor_attempts) for r in rs)
        ng = sum(r.genuine_attempts for r in rs)
        fr = sum(round(r.frr * r.genuine_attempts) for r in rs)
        mi = sum(round(r.misid * r.genuine_attempts) for r in rs)
        v = votes[label]
        shown = (
            label
            if label != "calibrated"
            else "calibrated (" + ", ".join(f"{t[0]:.3f}" for t in thresholds) + ")"
        )
        print(
            f"| {shown} | {ni} | {fa} | {fa / ni:.4f} ({cal.upper95(fa, ni):.4f}) | {ng} | {fr / ng:.3f} | {mi} | "
            f"{v[1]} / {v[0]} | {v[3]} / {v[2]} |"
        )

    print(
        "\nSafety margin per fold "
        + ", ".join(f"{m:.3f}" for m in margins)
        + "; closest held-apart impostor above the calibrated threshold by "
        + ", ".join(f"{x:+.3f}" for x in slack)
        + " (per fold; negative: a never-seen person let in)"
    )
    print(
        "\nCalibrated FRR per data set: "
        + ", ".join(f"{k} {v[1]}/{v[0]} = {v[1] / v[0]:.3f}" for k, v in per_ds.items())
    )


if __name__ == "__main__":
    main()
