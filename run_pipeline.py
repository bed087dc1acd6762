#!/usr/bin/env python3
"""vidpipe command line.

python run_pipeline.py [--config configs/default.yaml] [--source URL] [--print-events]   run the pipeline
python run_pipeline.py models fetch|list                                                  model store
python run_pipeline.py evaluate --annotations A.json --images DIR                         COCO mAP
python run_pipeline.py faces enroll|list|remove|rename ...                                face gallery
python run_pipeline.py cameras list|add|edit|pause|resume|remove ... [--url WEB_APP]       cameras
python run_pipeline.py bench cameras --config C [--max N] [--seconds S]                   cameras this machine holds
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module in pipeline/cli exposing add_arguments(parser) and main(args) -> int
SUBCOMMANDS = {
    "run": "pipeline.cli.run",
    "models": "pipeline.cli.models",
    "evaluate": "pipeline.cli.evaluate",
    "faces": "pipeline.cli.faces",
    "cameras": "pipeline.cli.cameras",
    "bench": "pipeline.cli.bench",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # No subcommand means "run": `run_pipeline.py --config X` is the everyday form.
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    parser = argparse.ArgumentParser(prog="run_pipeline.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, modname in SUBCOMMANDS.items():
        module = importlib.import_module(modname)
        modules[name] = module
        p = sub.add_parser(
            name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None
        )
        module.add_arguments(p)
    args = parser.parse_args(argv)
    return int(modules[args.command].main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
