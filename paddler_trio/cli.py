"""The `paddler` command line: parses flags into config objects and hands them to a supervisor.

Each subcommand lives in its own module and registers itself here through `add_parser`;
this module only builds the argument tree and dispatches.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from paddler_trio import __version__

Handler = Callable[[argparse.Namespace], int]

# Each module defines `add_parser(subcommands)` and sets `handler` on its parser.
_SUBCOMMAND_MODULES = ("balancer_cli", "agent_cli", "quickstart_cli", "dashboard_cli", "bundled_models_cli")


def _configure_logging() -> None:
    level_name = os.environ.get("PADDLER_LOG", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level_name, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP call the process makes itself is noise at info level.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paddler",
        description="Stateful load balancer and serving platform for llama.cpp (Trio edition).",
    )
    parser.add_argument("--version", action="version", version=f"paddler {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="<command>")

    import importlib

    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"paddler_trio.{module_name}").add_parser(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    _configure_logging()
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
