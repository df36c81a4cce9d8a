"""The `larp` command line. Each sub-command is a thin call into the library.

Areas register their sub-commands from their own `commands` module (`larp.data.commands`, ...), each with
a `register(subparsers)` function that adds parsers whose `func` default takes the parsed arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from .data import commands as data_commands

    parser = argparse.ArgumentParser(prog="larp", description="LARP video tokenizer and AR video generator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (data_commands,):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
