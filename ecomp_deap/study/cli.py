"""Command-line plumbing shared by the scripts in ``experiments/`` and ``benchmarks/``:
one-line errors with exit code 2, and ``--debug`` for a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..errors import ResultsError, UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``prog: error: ...``), exit code 2."""

    def error(self, message: str):
        """Exit with code 2 after one line on stderr: ``prog: error: MESSAGE (see --help)``."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help that keeps the description's line breaks and shows each option's default."""


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
    """An argparse type: a finite number, with a one-line message otherwise."""
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


def add_data_and_parent_arguments(group) -> None:
    """--data-dir, --no-download, --cache-dir and the parent's options (the scripts that
    load FashionMNIST and a parent share them)."""
    group.add_argument("--data-dir", help="FashionMNIST root (default: $ECOMP_DATA_DIR or ~/.cache/ecomp_deap/data)")
    group.add_argument("--no-download", action="store_true", help="never try torchvision's download")
    group.add_argument("--cache-dir", help="parent weights cache (default: ~/.cache/ecomp_deap)")
    add_parent_arguments(group)


def add_parent_arguments(group) -> None:
    """The options that choose the parent network, shared by run.py and baselines.py."""
    group.add_argument("--arch", choices=("mlp", "cnn"),
                       help="the parent trained (and cached) when no --parent is given: mlp (784-256-256-10, the "
                            "reference) or cnn (conv 16-32, 3x3 + BatchNorm + ReLU + max pool, linear 64-10); "
                            "default: what the presets are for (cnn_* presets: cnn), else mlp")
    group.add_argument("--hidden", nargs="+", type=positive_int, metavar="W",
                       help="parent hidden Linear widths (default: mlp 256 256, cnn 64)")
    group.add_argument("--channels", nargs="+", type=positive_int, metavar="C",
                       help="--arch cnn: convolution block widths (default 16 32)")
    group.add_argument("--parent-epochs", type=positive_int, help="parent training epochs (default: mlp 4, cnn 5)")
    group.add_argument("--parent", metavar="PATH",
                       help="load this parent instead: a saved nn.Sequential (an MLP or a CNN chain of Conv2d, "
                            "BatchNorm, pooling, Linear, ...) or a state dict of the toolkit's own layouts")
    group.add_argument("--trust-parent-file", action="store_true",
                       help="--parent: unpickle the file fully (it can then run code: only for files you trust); "
                            "without it only tensors, plain data and the supported torch layers are loaded")
    group.add_argument("--allow-weak-parent", action="store_true",
                       help="go on with a parent whose accuracy on the training data is at chance level (refused "
                            "by default: its inputs are likely scaled or ordered unlike its training data)")


def parent_spec(args, preset_archs=()):
    """The spec of the parent to train or load from the cache: ``--arch``, else the
    architecture the presets are made for (``preset_archs``), else the reference MLP."""
    from ..errors import ConfigError
    from ..nets.parents import DEFAULT_CNN_CHANNELS, DEFAULT_CNN_EPOCHS, DEFAULT_CNN_HIDDEN, ParentSpec

    wanted = set(preset_archs) - {None}
    if len(wanted) > 1:
        raise ConfigError("these presets are for different parents (MLP and CNN); run them in separate commands")
    if args.arch and wanted and wanted != {args.arch} and not args.parent:
        raise ConfigError(f"the presets given are for a {wanted.pop()} parent, not --arch {args.arch}")
    arch = args.arch or (wanted.pop() if wanted else "mlp")
    if arch == "cnn":
        return ParentSpec(arch="cnn", channels=tuple(args.channels or DEFAULT_CNN_CHANNELS),
                          hidden=tuple(args.hidden or DEFAULT_CNN_HIDDEN),
                          epochs=args.parent_epochs or DEFAULT_CNN_EPOCHS)
    if args.channels:
        raise ConfigError("--channels goes with --arch cnn")
    return ParentSpec(hidden=tuple(args.hidden or (256, 256)), epochs=args.parent_epochs or 4)


def load_parent(args, data, preset_archs=(), progress: bool = True, log=print):
    """The scripts' entry for a parent: ``--parent PATH`` (loaded safely) or the default
    parent trained once and cached (``--arch``, ``--hidden``, ...), read once
    (:func:`~ecomp_deap.nets.reader.read_parent`), with ``data`` (FashionMNIST) checked
    against it once (:func:`~ecomp_deap.search.run.check_data`: a parent at chance level on
    the training data is refused unless ``--allow-weak-parent``); its accuracy there is
    logged. Returns (the :class:`~ecomp_deap.nets.reader.Parent`, the checked
    :class:`~ecomp_deap.search.run.RunData`, the parent's test accuracy)."""
    from pathlib import Path

    from ..data import default_cache_dir
    from ..nets.parents import accuracy, load_or_train_parent, load_parent_file
    from ..nets.reader import read_parent
    from ..search.run import check_data

    spec = parent_spec(args, preset_archs)
    weak = dict(allow_weak_parent=getattr(args, "allow_weak_parent", False), opt_in="--allow-weak-parent")
    if args.parent:
        model = load_parent_file(args.parent, trust_pickle=args.trust_parent_file)
        parent = read_parent(model, data.train_x)
        checked = check_data(parent, data, **weak)  # before anything runs on the data: inputs, classes, accuracy
        test_accuracy = accuracy(parent.model, data.test_x, data.test_y)
        log(f"parent: loaded {args.parent} (test accuracy {test_accuracy:.4f})")
    else:
        cache = Path(args.cache_dir) if getattr(args, "cache_dir", None) else default_cache_dir()
        info = load_or_train_parent(spec, data, cache, progress=progress, log=log)
        parent = read_parent(info.model, data.train_x)
        checked, test_accuracy = check_data(parent, data, **weak), info.test_accuracy
    log(f"parent: {checked.data_accuracy.describe()}")
    return parent, checked, test_accuracy
