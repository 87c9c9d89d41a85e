"""What every entry point shares: expected failures end in `error: ...`, never a traceback.

    if __name__ == "__main__":
        cli.run(main, parse_args)

A KitError (bad data, settings, download or model file) or an OSError (a missing or
unreadable file, a full disk) prints `error: <message>` to stderr and exits 1;
KeyboardInterrupt exits 130. `--debug` on the command line, or DEEPLAB_DEBUG=1, lets the
traceback through instead. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from kit.errors import KitError

DEBUG_ENV = "DEEPLAB_DEBUG"


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= minimum, else a usage error saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"whole number >= {minimum}"  # argparse names the type in its messages
    return parse


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks and TensorFlow's start-up log (or set {DEBUG_ENV}=1)")


def debugging(argv: list[str] | None = None) -> bool:
    """Whether --debug is on the command line or DEEPLAB_DEBUG is set (read before parsing)."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(err: BaseException) -> str:
    """The one-line message for an expected failure."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    return str(err)


def run(main: Callable, parse_args: Callable, argv: list[str] | None = None):
    """`main(parse_args(argv))`, with expected failures turned into `error: ...` and exit status 1."""
    debug = debugging(argv)
    try:
        return main(parse_args(argv))
    except (KitError, OSError) as err:
        if debug:
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
