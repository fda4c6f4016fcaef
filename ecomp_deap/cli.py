"""Command-line plumbing shared by the scripts in ``experiments/`` and ``benchmarks/``:
one-line errors with exit code 2, and ``--debug`` for a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import UserError
from .results import ResultsError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``prog: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _int_at_least(low: int):
    """An argparse type: a whole number >= ``low``, with a one-line message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def run_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None,
             extra_errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run ``main(argv)`` and exit with its status. A user error (and any of
    ``extra_errors``) becomes one ``error: ...`` line on stderr and exit code 2;
    ``--debug`` among the arguments lets the traceback through instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, ResultsError, *extra_errors) as e:
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, (UserError, ResultsError)):
            msg = f"{msg} ({type(e).__name__}; run with --debug for a traceback)"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    sys.exit(int(code or 0))
