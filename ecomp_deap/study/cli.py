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
    group.add_argument("--arch", choices=("mlp", "cnn", "resnet"),
                       help="the parent trained (and cached) when no --parent is given: mlp (784-256-256-10, the "
                            "reference), cnn (conv 16-32, 3x3 + BatchNorm + ReLU + max pool, linear 64-10) or resnet "
                            "(a ResNet-20-style network: 3 BasicBlocks per stage at 16-32-64 channels); default: what "
                            "the presets are for (cnn_* presets: cnn, resnet_*: resnet), else mlp")
    group.add_argument("--hidden", nargs="+", type=positive_int, metavar="W",
                       help="parent hidden Linear widths (default: mlp 256 256, cnn 64)")
    group.add_argument("--channels", nargs="+", type=positive_int, metavar="C",
                       help="--arch cnn: convolution block widths (default 16 32); --arch resnet: stage widths "
                            "(default 16 32 64)")
    group.add_argument("--blocks", type=positive_int, help="--arch resnet: BasicBlocks per stage (default 3)")
    group.add_argument("--parent-epochs", type=positive_int,
                       help="parent training epochs (default: mlp 4, cnn 5, resnet 10, cosine learning-rate decay)")
    group.add_argument("--parent", metavar="PATH",
                       help="load this parent instead: a saved nn.Sequential, a state dict of the toolkit's own "
                            "layouts, or, with --model, the state dict of the model that builds")
    group.add_argument("--model", metavar="FILE.py:FUNCTION",
                       help="your own network: FUNCTION() in FILE.py (or MODULE:FUNCTION) returns the nn.Module "
                            "(any traceable classifier: residual, depthwise, branching); its weights from --parent "
                            "(a state dict, read with weights_only=True). The file is imported: it runs your code")
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
    from ..nets.parents import (
        DEFAULT_CNN_CHANNELS,
        DEFAULT_CNN_EPOCHS,
        DEFAULT_CNN_HIDDEN,
        DEFAULT_RESNET_BLOCKS,
        DEFAULT_RESNET_CHANNELS,
        DEFAULT_RESNET_EPOCHS,
        DEFAULT_RESNET_SCHEDULE,
        ParentSpec,
    )

    wanted = set(preset_archs) - {None}
    if len(wanted) > 1:
        raise ConfigError("these presets are for different parents (" + ", ".join(sorted(wanted))
                          + "); run them in separate commands")
    own = args.parent or getattr(args, "model", None)
    if args.arch and wanted and wanted != {args.arch} and not own:
        raise ConfigError(f"the presets given are for a {wanted.pop()} parent, not --arch {args.arch}")
    arch = args.arch or (wanted.pop() if wanted else "mlp")
    if getattr(args, "blocks", None) and arch != "resnet":
        raise ConfigError("--blocks goes with --arch resnet")
    if arch == "resnet":
        if args.hidden:
            raise ConfigError("--hidden does not go with --arch resnet (its classifier is one Linear layer)")
        return ParentSpec(arch="resnet", channels=tuple(args.channels or DEFAULT_RESNET_CHANNELS), hidden=(),
                          blocks=getattr(args, "blocks", None) or DEFAULT_RESNET_BLOCKS,
                          epochs=args.parent_epochs or DEFAULT_RESNET_EPOCHS, schedule=DEFAULT_RESNET_SCHEDULE)
    if arch == "cnn":
        return ParentSpec(arch="cnn", channels=tuple(args.channels or DEFAULT_CNN_CHANNELS),
                          hidden=tuple(args.hidden or DEFAULT_CNN_HIDDEN),
                          epochs=args.parent_epochs or DEFAULT_CNN_EPOCHS)
    if args.channels:
        raise ConfigError("--channels goes with --arch cnn or resnet")
    return ParentSpec(hidden=tuple(args.hidden or (256, 256)), epochs=args.parent_epochs or 4)


def load_parent(args, data, preset_archs=(), progress: bool = True, log=print):
    """The scripts' entry for a parent: ``--model FILE.py:FN`` (with ``--parent`` weights),
    ``--parent PATH`` (loaded safely) or the default parent trained once and cached
    (``--arch``, ``--hidden``, ...), read once (:func:`~ecomp_deap.nets.reader.read_parent`),
    with ``data`` (FashionMNIST) checked against it once (:func:`~ecomp_deap.search.run.check_data`:
    a parent at chance level on the training data is refused unless ``--allow-weak-parent``);
    its accuracy there is logged. Returns (the :class:`~ecomp_deap.nets.reader.Parent`, the
    checked :class:`~ecomp_deap.search.run.RunData`, the parent's test accuracy)."""
    from dataclasses import asdict
    from pathlib import Path

    from ..data import default_cache_dir
    from ..nets.parents import accuracy, load_or_train_parent, load_parent_file, model_from_builder
    from ..nets.reader import read_parent
    from ..search.run import check_data

    spec = parent_spec(args, preset_archs)
    weak = dict(allow_weak_parent=getattr(args, "allow_weak_parent", False), opt_in="--allow-weak-parent")
    model_ref = getattr(args, "model", None)
    if model_ref or args.parent:
        if model_ref:
            model = model_from_builder(model_ref, args.parent)
            source, what = {"kind": "builder", "ref": model_ref}, f"{model_ref}" + (f" with {args.parent}" if args.parent else "")
        else:
            model = load_parent_file(args.parent, trust_pickle=args.trust_parent_file)
            source, what = None, str(args.parent)
        parent = read_parent(model, data.train_x, source)
        checked = check_data(parent, data, **weak)  # before anything runs on the data: inputs, classes, accuracy
        test_accuracy = accuracy(parent.model, data.test_x, data.test_y)
        log(f"parent: loaded {what} (test accuracy {test_accuracy:.4f})")
    else:
        cache = Path(args.cache_dir) if getattr(args, "cache_dir", None) else default_cache_dir()
        info = load_or_train_parent(spec, data, cache, progress=progress, log=log)
        parent = read_parent(info.model, data.train_x, {"kind": "spec", "spec": asdict(spec)})
        checked, test_accuracy = check_data(parent, data, **weak), info.test_accuracy
    log(f"parent: {checked.data_accuracy.describe()}")
    return parent, checked, test_accuracy


def fit_layers(config, net, explicit: set):
    """``config`` with the layer names it gives (``embedding_layers``,
    ``recombination_layers``) replaced by None (the parent's own defaults: every hidden
    group layer, each stage's output) where the parent has no layer of those names, unless
    the user named them (``explicit``): a preset made for the reference MLP then runs on
    any parent."""
    changes = {}
    if "embedding_layers" not in explicit and config.embedding_layers is not None \
            and any(n not in net.embedding_names for n in config.embedding_layers):
        changes["embedding_layers"] = None
    if "recombination_layers" not in explicit and config.recombination_layers is not None \
            and any(n not in net.stage_names for n in config.recombination_layers):
        changes["recombination_layers"] = None
    return config.replace(**changes) if changes else config
