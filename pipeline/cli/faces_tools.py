"""``faces calibrate`` and ``faces identify`` (the operating point of the matcher, and what it sees).

python run_pipeline.py faces calibrate [--impostors DIR ...] [--far 0.001] [--k 3] [--dry-run]
python run_pipeline.py faces identify PHOTO [PHOTO ...]      (one JSON line per face)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.analyze.faces.gallery import Gallery
from pipeline.config.faces import FacesConfig

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm"}


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="choose the match threshold from the gallery (+ impostor photos)")
    p.add_argument(
        "--impostors",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of photos of people who are NOT enrolled (searched recursively); may repeat",
    )
    p.add_argument("--far", type=float, default=0.001, help="target per-attempt false accept rate")
    p.add_argument("--k", type=int, default=3, help="frames in a door vote (for the vote's rates)")
    p.add_argument(
        "--safety",
        type=float,
        default=None,
        help="distance taken off the gallery-derived threshold (default: the standard error of the impostors' "
        "mean nearest distance over identities, 95 %%; see docs/door-decisions.md)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the report, do not store the threshold")
    p = sub.add_parser("identify", help="print what the gallery makes of each face in photos (JSON lines)")
    p.add_argument("photos", nargs="+")


def _photos(dirs: list[str]) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ValueError(f"--impostors {d}: not a folder")
        out += sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    return out


def run(args: argparse.Namespace, cfg: FacesConfig, gallery: Gallery) -> int:
    from pipeline.analyze.faces.enroll import FaceEngine, load_photo

    engine = FaceEngine.from_config(cfg)
    templates = gallery.templates(engine.model_id)
    if args.action == "identify":
        from pipeline.analyze.faces.analyzer import operating_point
        from pipeline.analyze.faces.identify import identify_image
        from pipeline.analyze.faces.matcher import Matcher

        threshold, margin, source = operating_point(cfg, gallery, engine.model_id)
        matcher = Matcher(templates, threshold, margin)
        print(
            json.dumps({"threshold": threshold, "margin": margin, "source": source, "people": len(matcher)})
        )
        bad = 0
        for photo in args.photos:
            try:
                rows = identify_image(engine, matcher, load_photo(photo, Path(photo), cfg), photo)
            except ValueError as exc:
                rows = [{"photo": photo, "name": None, "decision": "error", "reason": str(exc)}]
                bad += 1
            for row in rows:
                print(json.dumps(row))
        return 1 if bad else 0

    from pipeline.analyze.faces import calibrate as cal
    from pipeline.analyze.faces.identify import largest_face_embedding

    if not 0 < args.far < 1:
        raise ValueError(f"--far must be between 0 and 1, got {args.far}")
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    names = sorted(templates)
    if not names:
        raise ValueError(
            f"no templates of model {engine.model_id} in {cfg.gallery_path}: enroll people first"
        )
    external = []
    skipped = 0
    for photo in _photos(args.impostors):
        try:
            emb = largest_face_embedding(engine, load_photo(str(photo), photo, cfg))
        except ValueError:
            emb = None
        if emb is None:
            skipped += 1
        else:
            external.append(emb)
    att = cal.merge(
        cal.gallery_attempts(templates),
        cal.external_attempts(templates, np.asarray(external, np.float32).reshape(-1, 128)),
    )
    loio = int((~att.genuine).sum()) - len(external)
    safety = cal.safety_margin(att) if args.safety is None else args.safety
    rates = cal.choose_threshold(att, names, cfg.margin, args.far, safety)
    rep = cal.report(
        rates,
        args.k,
        engine.model_id,
        args.far,
        {
            "gallery_leave_one_identity_out": loio,
            "impostor_photos": len(external),
            "photos_without_face": skipped,
        },
        cal.tail_threshold(att, args.far),
        safety,
        cal.unmargined_threshold(att, names, cfg.margin, args.far),
    )
    print(json.dumps(rep, indent=2))
    print(
        f"threshold {rates.threshold:.3f} (margin {rates.margin:.3f}; normal-tail estimate "
        f"{rep['tail_threshold']:.3f}; {rep['threshold_without_safety']:.3f} less the safety margin {safety:.3f}): "
        f"per attempt FAR {rates.far:.4f} "
        f"({rates.impostor_attempts} impostor attempts; 95 % upper bound {rates.far_upper95:.4f}), "
        f"FRR {rates.frr:.4f} ({rates.genuine_attempts} genuine attempts); {args.k}-frame vote FAR between "
        f"{rep['vote_far_independent']:.2e} (independent frames) and {rates.far:.4f} (identical frames)"
    )
    if rates.impostor_attempts < 3 / args.far:
        print(
            f"note: {rates.impostor_attempts} impostor attempts cannot show a FAR of {args.far}; "
            f"about {int(np.ceil(3 / args.far))} are needed (add --impostors photos)"
        )
    if args.dry_run:
        print("dry run: threshold not stored")
    else:
        gallery.set_calibration(engine.model_id, rates.threshold, rates.margin, json.dumps(rep))
        print(f"stored for model {engine.model_id} in {cfg.gallery_path}")
    return 0
