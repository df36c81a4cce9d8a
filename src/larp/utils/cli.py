"""The command line's shared vocabulary: one name, one spelling rule and one default per concept.

Every option is added under its underscore name (`--batch_size`), its hyphenated spelling (`--batch-size`)
and any alias (the reference release's `--ns`, an older `--output_dir`), always with a help text that shows
the default. The helpers below add the options that several commands share, so that `--tokenizer`,
`--device`, `-o/--out`, `--overwrite`, ... read and behave the same in every command.

This module must stay light (argparse only): `larp --help` builds parsers without importing torch."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from larp.utils.errors import LarpError

T = TypeVar("T")

# The names of larp.utils.device.DTYPES, repeated here so that building a parser does not import torch
# (a test keeps the two equal).
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")

# Actions whose default needs no mention: flags and argparse's own options.
_FLAG_ACTIONS = (argparse._StoreConstAction, argparse._HelpAction,
                 argparse._VersionAction, argparse._CountAction, argparse.BooleanOptionalAction)


class BooleanOption(argparse.BooleanOptionalAction):
    """`--det` / `--no-det` / `--no_det`: argparse's on/off pair, with the negative form in both spellings."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        for s in [s for s in self.option_strings if s.startswith("--no-")]:
            underscored = "--no_" + s[len("--no-"):]
            if underscored not in self.option_strings:
                self.option_strings.append(underscored)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string in self.option_strings:
            setattr(namespace, self.dest, not option_string.startswith(("--no-", "--no_")))


def spellings(name: str) -> list[str]:
    """`batch_size` -> ['--batch_size', '--batch-size']; a name with neither '_' nor '-' has one spelling."""
    name = name.lstrip("-")
    out = [f"--{name}"]
    for a, b in (("_", "-"), ("-", "_")):
        if a in name:
            out.append(f"--{name.replace(a, b)}")
    return out


def _with_default(help: str, default: Any, action: str | type | None) -> str:
    if isinstance(action, type) and issubclass(action, _FLAG_ACTIONS):
        return help
    if action in ("store_true", "store_false", "store_const", "count", "help", "version"):
        return help
    if "default" in help.lower() or default is argparse.SUPPRESS:
        return help
    if default is None:
        return help  # the caller says what None means, or the option is required
    shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return f"{help} (default: {shown})"


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *aliases: str,
               help: str, **kwargs: Any) -> argparse.Action:
    """Add `--name`, its other spelling and `aliases` (each long alias in both spellings), dest `name`.

    `help` is required and gets "(default: X)" appended unless it mentions the default already, the
    option is a flag, or the default is None (then `help` must say what happens without the option)."""
    dest = name.lstrip("-").replace("-", "_")
    names: list[str] = [a for a in aliases if not a.startswith("--")]  # short forms (-o) first, as usual
    for spelling in [*spellings(name), *(s for a in aliases if a.startswith("--") for s in spellings(a))]:
        if spelling not in names:
            names.append(spelling)
    if kwargs.get("required"):
        text = help
    else:
        text = _with_default(help, kwargs.get("default"), kwargs.get("action"))
    return parser.add_argument(*names, dest=dest, help=text, **kwargs)


# --- value checks: argparse reports them as usage errors (exit status 2) -----------------------------------

def _number(kind: type, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, counts, batch sizes)."""
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (indices, worker counts, overlaps)."""
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = int(_number(int, text))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [1, 65535], got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (no nan, no inf)."""
    return float(_number(float, text))


def positive_float(text: str) -> float:
    """A finite number > 0 (frame rates, temperatures)."""
    value = float(_number(float, text))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (guidance scales, loss weights)."""
    value = float(_number(float, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (validation fractions)."""
    value = float(_number(float, text))
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in (0, 1] (nucleus sampling mass)."""
    value = float(_number(float, text))
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


# --- the shared options ----------------------------------------------------------------------------------

def add_tokenizer(parser: argparse.ArgumentParser, *, required: bool = True, help: str | None = None) -> None:
    add_option(parser, "tokenizer", required=required, metavar="TOKENIZER",
               help=help or "a tokenizer folder or Hugging Face repo id")


def add_ar_model(parser: argparse.ArgumentParser, *, required: bool = True, help: str | None = None) -> None:
    add_option(parser, "ar_model", required=required, metavar="AR_MODEL",
               help=help or "an AR model folder or Hugging Face repo id")


def add_dataset_csv(parser: argparse.ArgumentParser, *, required: bool = True, help: str | None = None) -> None:
    add_option(parser, "dataset_csv", required=required, metavar="CSV",
               help=help or "metadata CSV of the videos (columns id,path,action,label)")


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    add_option(parser, "device", default=default,
               help="auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps, ...")


def add_dtype(parser: argparse.ArgumentParser, default: str | None = "float32",
              choices: tuple[str, ...] = DTYPE_NAMES, help: str | None = None) -> None:
    add_option(parser, "dtype", default=default, choices=choices,
               help=help or "compute precision (bfloat16 / float16 run under autocast)")


def add_batch_size(parser: argparse.ArgumentParser, default: int, help: str = "clips per forward pass") -> None:
    add_option(parser, "batch_size", type=positive_int, default=default, help=help)


THREADS_HELP = ("torch's CPU threads (default: every CPU this process may use, as torch counts its cores; "
                "a training recipe's run.threads unless given here)")


def add_threads(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    add_option(parser, "threads", type=positive_int, default=None, help=help)


def add_seed(parser: argparse.ArgumentParser, default: int = 0, help: str = "random seed") -> None:
    add_option(parser, "seed", type=int, default=default, help=help)


def add_num_workers(parser: argparse.ArgumentParser, default: int = 0) -> None:
    add_option(parser, "num_workers", type=non_negative_int, default=default,
               help="DataLoader worker processes reading videos (0: read in the main process)")


def add_output(parser: argparse.ArgumentParser, *aliases: str, help: str, required: bool = True,
               default: str | None = None, metavar: str = "OUT") -> None:
    """`-o` / `--out` (dest `out`), plus the command's older names (`--output_dir`, `--output`) as aliases."""
    add_option(parser, "out", "-o", *aliases, required=required, default=default, metavar=metavar, help=help)


def add_overwrite(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                  help: str = "replace outputs that exist already (without it, an existing output is an error)"
                  ) -> None:
    add_option(parser, "overwrite", action="store_true", help=help)


def add_frame_budgets(parser: argparse.ArgumentParser) -> None:
    """`--max_frames` and `--max_frame_pixels`: the budgets a video's declared size is checked against
    before any work (larp.utils.budget; docs/safety.md)."""
    from larp.utils import budget

    add_option(parser, "max_frames", type=positive_int, default=budget.DEFAULT_MAX_FRAMES,
               help="refuse a video (read or written) of more frames than this, before any work")
    add_option(parser, "max_frame_pixels", type=positive_int, default=budget.DEFAULT_MAX_FRAME_PIXELS,
               help="refuse frames of more pixels (width x height) than this, before any work")


def add_memory_budget(parser: argparse.ArgumentParser) -> None:
    """`--max_memory_mb`: the frames one step may hold at once (larp.utils.budget)."""
    from larp.utils import budget

    add_option(parser, "max_memory_mb", type=positive_int, default=budget.DEFAULT_MAX_MEMORY_MB,
               help="refuse, before any work, settings whose frames (one batch, one window) need more memory "
                    "than this (MB)")


# --- run-time helpers ------------------------------------------------------------------------------------

def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """`path`, refused when it exists and `overwrite` is off (the error names the option that allows it)."""
    path = Path(path)
    if path.exists() and not overwrite:
        kind = "folder" if path.is_dir() else "file"
        raise LarpError(f"{path} exists already ({kind}); pass --overwrite to replace it")
    return path


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str | None = None,
             unit: str = "it", enabled: bool = True) -> Iterator[T]:
    """A progress bar (tqdm, on stderr) around `iterable`; the bar closes when the iteration ends or fails."""
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    with tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True) as bar:
        yield from bar
