"""The `larp` command line. Each sub-command is a thin call into the library.

Areas register their sub-commands from their own `commands` module (`larp.data.commands`, ...), each with
a `register(subparsers)` function that adds parsers whose `func` default takes the parsed arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from . import demo, sample_commands, videos_commands
    from .data import commands as data_commands
    from .eval import commands as eval_commands
    from .train import commands as train_commands

    parser = argparse.ArgumentParser(prog="larp", description="LARP video tokenizer and AR video generator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (data_commands, train_commands, sample_commands, eval_commands, videos_commands, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may sit anywhere after the sub-command (argparse stops collecting positionals
    # at the first option), so gather the leftovers here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
