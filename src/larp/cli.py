"""The `larp` command line. Each sub-command is a thin call into the library.

Areas register their sub-commands from their own `commands` module (`larp.data.commands`, ...), each with
a `register(subparsers)` function that adds parsers whose `func` default takes the parsed arguments; the
options come from `larp.utils.cli` (one name, spelling and default per concept).

`COMMANDS` names each command's module and its one-line help: `larp --help` lists the commands without
importing any module (no torch), and `larp COMMAND ...` imports only COMMAND's module. A command missing
from the table still works (every module is imported to find it) but is not listed by `larp --help`.

Errors: a user error (`larp.utils.errors.USER_ERRORS`: LarpError, ValueError, OSError) is printed as
`larp COMMAND: error: <one line>` with exit status 1 (or the error's `exit_status`: `larp data check`
keeps 1 for "problems found"); usage errors exit with 2 (argparse), Ctrl-C with 130; `--debug`
(anywhere on the line) shows the traceback instead."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from larp import __version__
from larp.utils.errors import USER_ERRORS, one_line

# command -> (module whose register() adds it, the one-line help shown by `larp --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("larp.data.commands", "write metadata CSVs (id,path,action,label) for a dataset"),
    "synth-data": ("larp.data.commands", "write the synthetic dataset (mp4 clips + train/val CSVs)"),
    "data": ("larp.data.commands", "check what the videos of dataset CSVs hold (see `larp data check -h`)"),
    "train": ("larp.train.commands", "train a tokenizer or an AR model from a YAML recipe"),
    "tokenize-dataset": ("larp.train.commands", "encode a dataset once into a token cache for AR training"),
    "sample": ("larp.sample.commands", "sample videos with an AR model for FVD (the reference protocol)"),
    "generate": ("larp.sample.commands", "videos of a class, or a long continuation by frame prediction"),
    "fvd": ("larp.eval.commands", "FVD between two folders of videos or .npz statistics files"),
    "eval": ("larp.eval.commands", "evaluate a model (see `larp eval tokenizer -h`)"),
    "tokenize": ("larp.videos.commands", "videos -> token files (.npz)"),
    "decode": ("larp.videos.commands", "a token file -> mp4"),
    "reconstruct": ("larp.videos.commands", "a video -> its reconstruction through a tokenizer (mp4) and PSNR"),
    "demo": ("larp.demo.pipeline", "the whole method on the synthetic dataset (CPU, minutes)"),
    "app": ("larp.app.commands", "a local web page: reconstruct, generate and continue videos (app extra)"),
}

DEBUG_FLAG = "--debug"


class _Registrar:
    """The sub-parsers action as `register()` sees it: the help of a listed command comes from COMMANDS."""

    def __init__(self, action: argparse._SubParsersAction) -> None:
        self._action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name in COMMANDS:
            kwargs["help"] = COMMANDS[name][1]
        return self._action.add_parser(name, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._action, attr)


def _modules(load: Iterable[str] | None) -> list[str]:
    every = list(dict.fromkeys(module for module, _ in COMMANDS.values()))
    if load is None:
        return every
    wanted = {COMMANDS[name][0] for name in load if name in COMMANDS}
    return [m for m in every if m in wanted]


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `larp` parser. `load`: the commands whose modules to import (None: all); the others are
    listed by name and help only."""
    parser = argparse.ArgumentParser(
        prog="larp", description="LARP video tokenizer and AR video generator.",
        epilog="Run `larp COMMAND -h` for a command's options. Options accept both spellings "
               "(--batch_size, --batch-size).")
    parser.add_argument("--version", action="version", version=f"larp {__version__}")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="show the full traceback of an error (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registrar = _Registrar(sub)
    for module in _modules(load):
        importlib.import_module(module).register(registrar)
    _add_threads(parser)
    for name, (_, help) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help, add_help=False)
    order = list(COMMANDS)  # the table's order in `larp --help`, however the modules registered
    sub._choices_actions.sort(key=lambda a: order.index(a.dest) if a.dest in order else len(order))
    return parser


def _add_threads(parser: argparse.ArgumentParser) -> None:
    """`--threads` on every command that runs (one without sub-commands of its own) and has no such option
    yet: one spelling and meaning everywhere (`larp.utils.threads`)."""
    from larp.utils.cli import add_threads

    for _, sub in _subparsers(parser):
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
        if leaf and sub.get_default("func") is not None and not any(a.dest == "threads" for a in sub._actions):
            add_threads(sub)


def _commands_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:  # argparse keeps sub-commands here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, sub))
                found += [(f"{name} {n}", p) for n, p in _subparsers(sub)]
    return found


def cli_reference() -> str:
    """The CLI reference in Markdown, generated from the parser (docs/cli.md)."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix the width so the text is stable
    try:
        parser = build_parser()
        parts = ["```", parser.format_help().rstrip(), "```"]
        for name, sub in _subparsers(parser):
            parts += ["", f"## `larp {name}`", "", "```", sub.format_help().rstrip(), "```"]
    finally:
        if saved is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts) + "\n"


CLI_DOC_HEADER = """\
# Command-line reference

Generated from the parser by `make docs` (a test keeps it current); `larp COMMAND -h` prints the same.
Every option accepts both spellings (`--batch_size`, `--batch-size`); the same concept has the same name
and default in every command. An error is one line (`larp COMMAND: error: ...`, exit status 1; usage
errors exit with 2); add `--debug` to see the traceback.

"""


def cli_doc() -> str:
    """The whole text of docs/cli.md."""
    return CLI_DOC_HEADER + cli_reference()


def write_cli_doc(path: str | os.PathLike = "docs/cli.md") -> bool:
    """Rewrite the generated CLI reference; True when it changed."""
    file = Path(path)
    old = file.read_text() if file.exists() else ""
    new = cli_doc()
    if new != old:
        file.write_text(new)
    return new != old


def _command_name(argv: Sequence[str]) -> str | None:
    """The sub-command named on the line: the first word that is not an option (top-level options take
    no value)."""
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token
    return None


def _leaf_prog(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """`larp eval tokenizer`: the prog of the deepest parser the arguments went through."""
    current = parser
    while True:
        action = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action is not None and action.dest != argparse.SUPPRESS else None
        if action is None or name not in action.choices:
            return current.prog
        current = action.choices[name]


def _terminate_as_interrupt() -> Any:
    """SIGTERM (a `kill`, a scheduler's time limit) ends the command like Ctrl-C does: the `finally` blocks
    run, so temporary files are removed and output locks released, instead of the process vanishing."""
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        return signal.signal(signal.SIGTERM, stop)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:cut]
    argv = [a for a in argv[:cut] if a != DEBUG_FLAG] + argv[cut:]

    command = _command_name(argv)
    parser = build_parser(load=[command] if command in COMMANDS else ([] if command is None else None))
    if command is not None and command not in _commands_action(parser).choices:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        parser.error(f"unknown command {command!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                       "; `larp --help` lists the commands"))
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
    prog = _leaf_prog(parser, args)
    previous = _terminate_as_interrupt()
    try:
        if "threads" in vars(args):  # before the command imports and builds anything
            from larp.utils.threads import use_threads

            use_threads(args.threads)
        result = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return int(getattr(exc, "exit_status", 1))
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
