"""`fb3stack` entry point: a thin dispatcher over the command modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fb3stack import __version__
from fb3stack.config import ConfigError
from fb3stack.data import DataError
from fb3stack.progress import quiet_third_party_bars
from fb3stack.workspace import CorruptArtefactError, StaleArtefactError, WorkspaceBusyError

logger = logging.getLogger("fb3stack")

# command modules in fb3stack.cli; each has register(subparsers) setting `func` on its parser
COMMANDS = ["check_data", "folds", "train", "import_", "blend", "predict", "run", "bundle", "report", "status"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fb3stack", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fb3stack {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fb3stack.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"fb3stack.cli.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party_bars()
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError, StaleArtefactError, CorruptArtefactError, WorkspaceBusyError) as err:
        logger.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished folds are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
