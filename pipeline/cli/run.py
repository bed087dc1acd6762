"""Run the pipeline (default command)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--source")
    parser.add_argument("--print-events", action="store_true")


def main(args: argparse.Namespace) -> int:
    print("runner not wired yet")
    return 2
