"""The `larp` command line. Each sub-command is a thin call into the library.

Areas register their sub-commands from their own `commands` module (`larp.data.commands`, ...), each with
a `register(subparsers)` function that adds parsers whose `func` default takes the parsed arguments."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from larp.data import commands as data_commands
    from larp.demo import pipeline as demo
    from larp.eval import commands as eval_commands
    from larp.sample import commands as sample_commands
    from larp.train import commands as train_commands
    from larp.videos import commands as videos_commands

    parser = argparse.ArgumentParser(prog="larp", description="LARP video tokenizer and AR video generator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (data_commands, train_commands, sample_commands, eval_commands, videos_commands, demo):
        module.register(sub)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:  # argparse keeps sub-commands here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, sub))
                found += [(f"{name} {n}", p) for n, p in _subparsers(sub)]
    return found


def cli_reference() -> str:
    """The CLI reference in Markdown, generated from the parser (the README embeds it)."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix the width so the text is stable
    try:
        parser = build_parser()
        parts = ["```", parser.format_help().rstrip(), "```"]
        for name, sub in _subparsers(parser):
            parts += ["", f"#### `larp {name}`", "", "```", sub.format_help().rstrip(), "```"]
    finally:
        if saved is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts) + "\n"


README_START, README_END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def update_readme(path: str = "README.md") -> bool:
    """Rewrite the README's generated CLI reference; True when it changed."""
    from pathlib import Path

    file = Path(path)
    text = file.read_text()
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{cli_reference()}{README_END}{tail}"
    file.write_text(new)
    return new != text


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
