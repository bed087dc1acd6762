"""faces subcommand: manage the face gallery, serve its HTTP API, check the door audit log.

    python run_pipeline.py faces enroll --name NAME PHOTO [PHOTO ...]
    python run_pipeline.py faces list
    python run_pipeline.py faces remove NAME
    python run_pipeline.py faces rename OLD NEW
    python run_pipeline.py faces serve                      (web app, faces only; API token: $VIDPIPE_FACES_TOKEN)
    python run_pipeline.py faces verify-audit FILE          (check a door audit log's hash chain)

Settings (gallery path, thresholds, API) come from the ``faces:`` section of ``--config`` when given,
else the defaults; ``--gallery`` overrides the gallery path.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, load_config
from pipeline.faces.config import FacesConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pipeline YAML (its faces: section is used)")
    parser.add_argument("--gallery", help="gallery SQLite file (default: faces.gallery_path)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("enroll", help="add photos of a person")
    p.add_argument("--name", required=True)
    p.add_argument("photos", nargs="+")
    sub.add_parser("list", help="list enrolled people")
    p = sub.add_parser("remove", help="remove a person and their templates")
    p.add_argument("name")
    p = sub.add_parser("rename", help="rename a person")
    p.add_argument("old")
    p.add_argument("new")
    p = sub.add_parser("serve", help="serve the web app's Faces page and /api/persons without a pipeline")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--var-dir", default="var", help="where the web login password hash lives")
    p = sub.add_parser("verify-audit", help="check a door audit log's hash chain")
    p.add_argument("file")


def _faces_config(args: argparse.Namespace) -> FacesConfig:
    cfg = load_config(args.config).faces if args.config else FacesConfig()
    if args.gallery:
        cfg = cfg.model_copy(update={"gallery_path": args.gallery})
    return cfg


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.action == "verify-audit":
        from pipeline.doors.audit import verify_log

        ok, n, _, problem = verify_log(args.file)
        print(f"{args.file}: {n} entries, chain {'intact' if ok else 'BROKEN: ' + problem}")
        return 0 if ok else 1

    from pipeline.faces.gallery import Gallery

    cfg = _faces_config(args)
    if args.action == "serve":
        return _serve(args, cfg)
    with Gallery(cfg.gallery_path) as gallery:
        if args.action == "list":
            people = gallery.persons()
            for p in people:
                print(f"{p.name}\t{p.templates} template(s)\t{','.join(p.model_ids)}")
            print(f"{len(people)} person(s) in {cfg.gallery_path}")
            return 0
        if args.action == "remove":
            gallery.remove(args.name)
            print(f"removed {args.name}")
            return 0
        if args.action == "rename":
            gallery.rename(args.old, args.new)
            print(f"renamed {args.old} -> {args.new}")
            return 0

        from pipeline.faces.enroll import FaceEngine, enroll_images, read_photo

        engine = FaceEngine.from_config(cfg)
        if args.action == "enroll":
            images, unreadable = [], []
            for path in args.photos:
                try:
                    images.append((path, read_photo(path)))
                except ValueError as exc:
                    unreadable.append(str(exc))
            report = enroll_images(gallery, engine, cfg, args.name, images)
            for line in unreadable:
                print(f"{line.split(': ', 1)[0]}: rejected: {line.split(': ', 1)[1]}")
            for line in report.lines():
                print(line)
            return 0 if report.accepted else 1
    return 2


def _serve(args: argparse.Namespace, cfg: FacesConfig) -> int:
    """The web app without a pipeline: the Faces page and /api/persons (login or bearer token)."""
    import threading
    from pathlib import Path

    from pipeline.web.config import WebConfig
    from pipeline.web.server import WebServer, first_login_note, make_context

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
