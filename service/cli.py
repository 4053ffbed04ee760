"""``python -m service <command>``: one argparse parser, one subparser per command module.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. To add a command, append its module to ``COMMANDS``. Modules are
imported when the CLI runs, never at package import, and must stay light at import time.
"""

import argparse
import importlib
import sys

COMMANDS = [
    "service.serving.http.serve_command",  # serve
    "service.predict",  # predict
    "service.export.cli",  # export
    "service.listen",  # listen (a WS /stream client)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service",
                                     description="diffres-serve command line")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
