"""fb3stack: train a zoo of FB3 essay scorers on shared folds, blend them by nested CV, predict offline.

The usual order: check-data, run (folds, train, blend, predict and report in one), status, bundle, then
predict --bundle on the offline machine. `fb3stack <command> --help` describes each command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from fb3stack import __version__
from fb3stack.config import ConfigError
from fb3stack.data import DataError
from fb3stack.progress import quiet_third_party_bars
from fb3stack.workspace import CorruptArtefactError, MissingArtefactError, StaleArtefactError, WorkspaceBusyError

logger = logging.getLogger("fb3stack")

# command modules in fb3stack.cli; each has register(subparsers) setting `func` on its parser
COMMANDS = ["check_data", "folds", "train", "import_", "blend", "predict", "run", "bundle", "report", "status"]
# a user's mistake or a refused artefact: one line on stderr, exit 2, no traceback
USER_ERRORS = (DataError, ConfigError, StaleArtefactError, CorruptArtefactError, WorkspaceBusyError,
               MissingArtefactError)


def _verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    # accepted before and after the command; SUPPRESS keeps a subcommand's unset flag from hiding the top one's
    default = False if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fb3stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fb3stack {__version__}")
    _verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fb3stack.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"fb3stack.cli.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    for command_parser in sub.choices.values():
        _verbosity(command_parser, top=False)
    return parser


class _NotOnConsole(logging.Filter):
    """Keeps records marked `extra={"console": False}` out of the console (they still reach the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party_bars()
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(_NotOnConsole())
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not as a traceback at exit
        return rc
    except USER_ERRORS as err:
        # once on the console (the error: line); the workspace log, if the command opened one, keeps it too
        logger.error("%s", err, extra={"console": False})
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished folds are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`fb3stack status --json | head`): stop quietly, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
