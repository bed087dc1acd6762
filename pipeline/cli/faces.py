"""faces subcommand: manage the face gallery, serve its HTTP API, check the door audit log.

    python run_pipeline.py faces enroll --name NAME [--append] PHOTO [PHOTO ...]
    python run_pipeline.py faces enroll --name NAME --video FILE [--start S] [--end E] [--frames N]
    python run_pipeline.py faces try-door --config C --door D VIDEO [VIDEO ...]   (JSON line per decision)
    python run_pipeline.py faces list
    python run_pipeline.py faces remove NAME
    python run_pipeline.py faces rename OLD NEW
    python run_pipeline.py faces serve                      (web app, faces only; API token: $VIDPIPE_FACES_TOKEN)
    python run_pipeline.py faces verify-audit FILE [--redis URL]  (check a door audit log's whole history)
    python run_pipeline.py faces --config C audit-reset --door D --reason TEXT  (audited new generation)
    python run_pipeline.py faces calibrate [--impostors DIR]  (choose + store the match threshold)
    python run_pipeline.py faces identify PHOTO [PHOTO ...]   (JSON line per face: name, distance, margin)

Settings (gallery path, thresholds, API) come from the ``faces:`` section of ``--config`` when given,
else the defaults; ``--gallery`` overrides the gallery path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import faces_tools
from pipeline.config.faces import FacesConfig
from pipeline.config.paths import resolve_faces_paths
from pipeline.config.schema import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pipeline YAML (its faces: section is used)")
    parser.add_argument("--gallery", help="gallery SQLite file (default: faces.gallery_path)")
    parser.add_argument(
        "--var-dir", default="var", help="runtime data, as for a run: the default gallery lives here"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("enroll", help="enroll a new person from photos (--append: add to an existing one)")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--append", action="store_true", help="add the photos to an already enrolled person (audited)"
    )
    p.add_argument("photos", nargs="*")
    p.add_argument("--video", help="enroll from the best frames of this clip instead of photos")
    p.add_argument("--start", type=float, default=0.0, help="--video: seconds into the clip to start at")
    p.add_argument("--end", type=float, help="--video: seconds into the clip to stop at")
    p.add_argument("--frames", type=int, default=5, help="--video: how many frames to enroll (default 5)")
    p = sub.add_parser(
        "try-door",
        help="play recordings through a door's face and door code (JSON line per decision, summary per clip)",
    )
    p.add_argument("--config", default=argparse.SUPPRESS, help="pipeline YAML with the door and its camera")
    p.add_argument("--door", required=True, help="door id (doors: list)")
    p.add_argument("--camera", help="which of the door's cameras gives detect_fps (default: its first)")
    p.add_argument("--detect-fps", type=float, help="override the camera's detect_fps")
    p.add_argument("--end", type=float, help="play only the first END seconds of each clip")
    p.add_argument(
        "--at", help="wall-clock time the clips are played at, ISO 8601 (default now; the schedule applies)"
    )
    p.add_argument("videos", nargs="+")
    sub.add_parser("list", help="list enrolled people")
    p = sub.add_parser("remove", help="remove a person and their templates")
    p.add_argument("name")
    p = sub.add_parser("rename", help="rename a person")
    p.add_argument("old")
    p.add_argument("new")
    p = sub.add_parser("serve", help="serve the web app's Faces page and /api/persons without a pipeline")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    # SUPPRESS: without --var-dir here, the one given before `serve` (or its default) stays in force
    p.add_argument(
        "--var-dir",
        default=argparse.SUPPRESS,
        help="where the web login password hash lives (and the gallery)",
    )
    p = sub.add_parser(
        "verify-audit",
        help="check a door audit log's keyed chain and its checkpoints (key: $VIDPIPE_AUDIT_KEY[_FILE])",
    )
    p.add_argument("file")
    p.add_argument("--redis", help="also check the checkpoints published to this Redis (redis:// URL)")
    p.add_argument("--prefix", default="vidpipe", help="Redis key prefix of the pipeline (default vidpipe)")
    p = sub.add_parser(
        "audit-reset",
        help="operator's audited reset of a door's audit log (archives it, starts a new generation)",
    )
    p.add_argument("--door", required=True, help="door id in --config (its audit_log is reset)")
    p.add_argument("--reason", required=True, help="why (recorded in the keyed history)")
    p.add_argument("--redis", help="Redis holding the checkpoint history (default: the config's redis.url)")
    p.add_argument("--prefix", help="Redis key prefix (default: the config's redis.prefix)")
    faces_tools.add_arguments(sub)


def _faces_config(args: argparse.Namespace) -> FacesConfig:
    cfg = load_config(args.config).faces if args.config else FacesConfig()
    if args.gallery:
        cfg = cfg.model_copy(update={"gallery_path": args.gallery})
    # the same rule as a run (pipeline/config/paths.py), so `faces enroll` and the run use the same gallery and
    # enrollment audit log
    return resolve_faces_paths(cfg, args.var_dir)


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from pipeline.cli.private_files import use_private_files

    use_private_files(Path(args.var_dir))  # the gallery and the enrollment audit log are 0600, their dir 0700
    if args.action == "verify-audit":
        from pipeline.cli.verify_audit import verify_audit

        return verify_audit(args.file, args.redis, args.prefix)
    if args.action == "audit-reset":
        return _audit_reset(args)

    from pipeline.analyze.faces.gallery import Gallery, display_name

    cfg = _faces_config(args)
    if args.action == "serve":
        return _serve(args, cfg)
    if args.action == "try-door":
        from pipeline.cli.try_door import try_door

        return try_door(args, cfg)
    with Gallery(cfg.gallery_path) as gallery:
        if args.action == "list":
            people = gallery.persons()
            for p in people:
                print(f"{display_name(p.name)}\t{p.templates} template(s)\t{','.join(p.model_ids)}")
            print(f"{len(people)} person(s) in {cfg.gallery_path}")
            return 0
        if args.action == "remove":
            gallery.remove(args.name)
            print(f"removed {display_name(args.name)}")
            return 0
        if args.action == "rename":
            gallery.rename(args.old, args.new)
            print(f"renamed {display_name(args.old)} -> {display_name(args.new)}")
            return 0
        if args.action in ("calibrate", "identify"):
            return faces_tools.run(args, cfg, gallery)

        from pipeline.analyze.faces.enroll import FaceEngine, enroll_images

        if args.action == "enroll":
            if bool(args.video) == bool(args.photos):
                raise ValueError("faces enroll: give photos or --video FILE (one of them)")
            if args.video:
                from pipeline.cli.try_door import enroll_video

                return enroll_video(args, cfg, gallery)
            photos = [(path, Path(path)) for path in args.photos]
            report = enroll_images(
                gallery, lambda: FaceEngine.from_config(cfg), cfg, args.name, photos, append=args.append
            )
            for line in report.lines():
                print(line)
            return 0 if report.accepted else 1
    return 2


def _audit_reset(args: argparse.Namespace) -> int:
    from pipeline.cli.verify_audit import audit_reset
    from pipeline.config.paths import resolve_runtime_paths

    if not args.config:
        raise ValueError("audit-reset needs --config (the door's audit_log and redis settings come from it)")
    cfg = resolve_runtime_paths(load_config(args.config), args.var_dir)
    door = next((d for d in cfg.doors if d.id == args.door), None)
    if door is None:
        raise ValueError(f"no door {args.door!r} in {args.config} (doors: {[d.id for d in cfg.doors]})")
    url = args.redis or cfg.redis.url
    if url is None:
        print(
            "note: no Redis URL (redis.url unset, --redis not given): only the side file's history is consulted",
            file=sys.stderr,
        )
    prefix = args.prefix or cfg.redis.prefix
    return audit_reset(Path(door.audit_log), door.id, args.reason, url, prefix, cfg.redis.stream_maxlen)


def _serve(args: argparse.Namespace, cfg: FacesConfig) -> int:
    """The web app without a pipeline: the Faces page and /api/persons (login or bearer token)."""
    import threading

    from pipeline.config.web import WebConfig
    from pipeline.serve.web.server import WebServer, first_login_note, make_context

    full = load_config(args.config) if args.config else None
    web = (full.web if full else WebConfig()).model_copy(
        update={"host": args.host or cfg.api.host, "port": cfg.api.port if args.port is None else args.port}
    )
    var_dir = Path(args.var_dir)
    ctx, new_password = make_context(web, cfg, var_dir, doors=full.doors if full else [])
    server = WebServer(ctx).start()
    print(f"faces web app and API on {server.url} (Ctrl-C to stop)", flush=True)
    print(first_login_note(new_password, var_dir, web.password_env), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
