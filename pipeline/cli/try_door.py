"""``faces try-door`` (a door on recordings) and ``faces enroll --video`` (enrollment from a clip)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from pipeline.analyze.faces.gallery import Gallery
from pipeline.config.faces import FacesConfig
from pipeline.config.schema import load_config


def try_door(args: argparse.Namespace, cfg: FacesConfig) -> int:
    """Exit 0 when every clip was played, 1 when one could not be read (its summary says why)."""
    from pipeline.analyze.faces.enroll import FaceEngine
    from pipeline.analyze.faces.try_door import DoorTrial

    if not getattr(args, "config", None):
        raise ValueError("faces try-door needs --config (the door and its camera come from it)")
    full = load_config(args.config)
    doors = {d.id: d for d in full.doors}
    if args.door not in doors:
        raise ValueError(f"{args.config}: no door {args.door!r} in doors: (have {sorted(doors) or 'none'})")
    door = doors[args.door]
    camera_id = args.camera or door.cameras[0]
    if camera_id not in door.cameras:
        raise ValueError(f"door {door.id!r} does not watch camera {camera_id!r} (cameras: {door.cameras})")
    cams = {c.id: c for c in full.cameras}
    fps = (
        args.detect_fps
        if args.detect_fps is not None
        else (cams[camera_id].detect_fps if camera_id in cams else None)
    )
    t0 = datetime.fromisoformat(args.at).timestamp() if args.at else time.time()
    trial = DoorTrial(
        cfg, door, detect_fps=fps, engine=FaceEngine.from_config(cfg), t0=t0, camera_id=camera_id
    )
    failed = False
    try:
        for video in args.videos:
            for rec in trial.play(video, end=args.end):
                print(json.dumps(rec, sort_keys=False), flush=True)
                failed |= bool(rec.get("error"))
    finally:
        trial.close()
    return 1 if failed else 0


def enroll_video(args: argparse.Namespace, cfg: FacesConfig, gallery: Gallery) -> int:
    from pipeline.analyze.faces.enroll import FaceEngine, enroll_images
    from pipeline.analyze.faces.video_enroll import best_frames

    if args.frames < 1:
        raise ValueError("--frames must be at least 1")
    if not Path(args.video).is_file():
        raise ValueError(f"--video {args.video}: no such file")
    engine = FaceEngine.from_config(cfg)
    picked = best_frames(args.video, engine, cfg, start=args.start, end=args.end, count=args.frames)
    if not picked:
        print(
            f"{args.video}: no frame with exactly one face of at least {cfg.min_face_px:.0f} px and sharpness "
            f"{cfg.min_sharpness:.0f} between {args.start} s and {args.end if args.end is not None else 'the end'}",
            file=sys.stderr,
        )
        return 1
    images = [(f"{args.video}@{c.t:.2f}s", c.image) for c in sorted(picked, key=lambda c: c.t)]
    report = enroll_images(gallery, engine, cfg, args.name, images, append=args.append)
    for line in report.lines():
        print(line)
    return 0 if report.accepted else 1
