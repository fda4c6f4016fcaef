"""Shared helpers for the plot scripts (``plots/*.py``) and ``experiments/compare.py``.

* loading: :func:`load_experiments` reads one or more results folders (one
  experiment each) and checks the fields a script needs (:func:`require`), so a
  bad input fails before anything is drawn or written;
  :func:`load_baselines` reads a ``baselines.json`` folder.
* drawing: :func:`apply_style`, :func:`color_for`, :data:`MEASURES`; a run's first
  objective is accuracy or, without labels, fidelity (:func:`accuracy_objective`), and
  legends and axes say which.
* saving: :func:`save_figure` renders a figure to PNG and PDF in memory first and
  then writes both files atomically (temporary file + rename), so an error never
  leaves a half-written figure behind.
* command line: :func:`add_common_args` (``--out``, ``--dpi``, ``--debug``) and
  :func:`run_cli`, which turns user errors (missing folder, no results, wrong
  schema, ...) into ONE ``error: ...`` line on stderr and exit status 2; with
  ``--debug`` the exception is re-raised for a full traceback.

matplotlib is imported lazily (inside the functions that draw), so
``experiments/compare.py`` can use the loaders and :func:`run_cli` without it.
"""
from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import ResultsError
from ..files import load_json, write_bytes
from .cli import OneLineParser, positive_int, run_main  # noqa: F401  (positive_int: used by the plot scripts)
from .results import experiment_name, load_experiment, run_files

BASELINES_SCHEMA = "ecomp_deap.baselines/1"
BASELINES_FILE = "baselines.json"

# Okabe-Ito colour-blind-safe palette (black left out: it marks the parent/baselines).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#882255"]

# Logbook measures: key -> (short axis label, which direction is better)
MEASURES = {
    "accuracy": ("accuracy", "higher = better"),
    "compression": ("compression", "lower = smaller"),
    "similarity": ("similarity (t-SNE KL)", "lower = more similar"),
}

SELECTION_NAMES = {"weighted": "weighted sum", "nsga2": "NSGA-II"}

FIGURE_FORMATS = ("png", "pdf")


# --------------------------------------------------------------------------- loading


@dataclass
class ExperimentResults:
    """One experiment folder: its runs (ordered by K) and their files."""

    folder: Path
    name: str
    runs: list[dict]
    files: list[Path]

    @property
    def run_ids(self) -> list[int]:
        """Each run's K, from its file name."""
        return [int(p.stem[4:]) for p in self.files]

    @property
    def selection(self) -> str:
        """The runs' common ``selection`` ('weighted', 'nsga2'), or 'mixed'."""
        modes = {str(r.get("selection")) for r in self.runs}
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def objective(self) -> str:
        """The runs' common first objective ('accuracy', 'fidelity'), or 'mixed'."""
        found = {accuracy_objective(r) for r in self.runs}
        return found.pop() if len(found) == 1 else "mixed"

    @property
    def label(self) -> str:
        """The name and the selection mode, for legends: 'NAME (NSGA-II)', and the
        objective when it is not accuracy: 'NAME (NSGA-II, fidelity)'."""
        mode = SELECTION_NAMES.get(self.selection, self.selection)
        return f"{self.name} ({mode})" if self.objective == "accuracy" else f"{self.name} ({mode}, {self.objective})"

    def parent_accuracy(self) -> float:
        """The parent's test accuracy (the first finite one among the runs), NaN when none has it."""
        vals = [num(get_path(r, "parent.test_accuracy")) for r in self.runs]
        vals = [v for v in vals if math.isfinite(v)]
        return vals[0] if vals else math.nan


def accuracy_objective(run: dict) -> str:
    """What a run's first objective measured: 'accuracy' (the labels) or 'fidelity' (the
    parent's top-1 predictions); files written before the setting existed are 'accuracy'."""
    return str(get_path(run, "config.accuracy_objective", None) or "accuracy")


def accuracy_axis_label(exps: Sequence[ExperimentResults]) -> str:
    """The name of the first objective over ``exps``: 'accuracy', 'fidelity', or
    'accuracy or fidelity' when they differ."""
    found = sorted({accuracy_objective(r) for e in exps for r in e.runs})
    return " or ".join(found) if found else "accuracy"


def num(x: Any) -> float:
    """A JSON number as float; ``None``/missing/non-numeric -> NaN."""
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


_MISSING = object()


def get_path(obj: Any, dotted: str, default: Any = None) -> Any:
    """``get_path(run, "best.test_accuracy")``; ``default`` when any step is missing."""
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def require(exp: ExperimentResults, *fields: str) -> None:
    """Raise :class:`ResultsError` naming the file when a run lacks a field.

    A field ending in ``[]`` must be a list (``"logbook[]"``, ``"front[]"``).
    """
    for run, path in zip(exp.runs, exp.files):
        for field in fields:
            want_list = field.endswith("[]")
            key = field[:-2] if want_list else field
            value = get_path(run, key, _MISSING)
            if value is _MISSING:
                raise ResultsError(f"{path}: missing field {key!r}")
            if want_list and not isinstance(value, list):
                raise ResultsError(f"{path}: field {key!r} should be a list")


def is_baselines_folder(folder) -> bool:
    """Whether ``folder`` is a folder with a ``baselines.json`` and no run results."""
    folder = Path(folder)
    return folder.is_dir() and (folder / BASELINES_FILE).is_file() and not run_files(folder)


def load_experiment_folder(folder) -> ExperimentResults:
    """:func:`ecomp_deap.study.results.load_experiment` plus the file of each run."""
    folder = Path(folder)
    runs = load_experiment(folder)  # ResultsError: missing folder, no runs, wrong schema, bad JSON
    files = run_files(folder)
    if len(files) != len(runs):  # a run file appeared/vanished between the two listings
        raise ResultsError(f"{folder}: the run files changed while reading them; try again")
    return ExperimentResults(folder=folder, name=experiment_name(folder, runs), runs=runs, files=files)


def load_experiments(folders: Sequence, fields: Iterable[str] = ()) -> list[ExperimentResults]:
    """Load every folder (all before drawing anything) and check ``fields``.

    Two folders whose runs carry the same ``name`` get their folder path as name,
    so legends and tables stay unambiguous.
    """
    fields = tuple(fields)
    exps = [load_experiment_folder(f) for f in folders]
    for exp in exps:
        require(exp, *fields)
    names = [e.name for e in exps]
    for exp in exps:
        if names.count(exp.name) > 1:
            exp.name = str(exp.folder)
    return exps


def load_baselines(folder) -> dict:
    """``folder/baselines.json``, checked (its schema, and ``methods`` mapping names to
    lists of points); a one-line :class:`~ecomp_deap.errors.ResultsError` otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such baselines folder")
    path = folder / BASELINES_FILE
    if not path.is_file():
        raise ResultsError(f"{folder}: no {BASELINES_FILE} in this folder")
    data = load_json(path)
    if not isinstance(data, dict) or data.get("schema") != BASELINES_SCHEMA:
        raise ResultsError(f"{path}: not an ecomp_deap baselines file (expected schema {BASELINES_SCHEMA!r})")
    methods = data.get("methods")
    if not isinstance(methods, dict) or not all(isinstance(v, list) for v in methods.values()):
        raise ResultsError(f"{path}: field 'methods' should map method names to lists of points")
    return data


def logbook_series(run: dict, key: str, stat: str | None = "avg") -> tuple[np.ndarray, np.ndarray]:
    """(generations, values) of one logbook measure; missing/null values are NaN.

    ``stat=None`` reads a plain number (``"hypervolume"``, ``"front_size"``).
    ``"accuracy"`` reads the first objective under the run's name for it
    (:func:`accuracy_objective`: a run without labels logs ``"fidelity"``).
    """
    if key == "accuracy":
        key = accuracy_objective(run)
    gens, vals = [], []
    for i, entry in enumerate(run.get("logbook") or []):
        if not isinstance(entry, dict):
            continue
        gen = num(entry.get("gen", i))
        value = entry.get(key)
        if stat is not None:
            value = value.get(stat) if isinstance(value, dict) else None
        gens.append(gen if math.isfinite(gen) else float(i))
        vals.append(num(value))
    return np.asarray(gens, dtype=float), np.asarray(vals, dtype=float)


def front_points(run: dict) -> np.ndarray:
    """(N, 3) array of a run's front: test accuracy, compression, similarity.

    Points without a finite accuracy or compression are dropped; similarity may be NaN.
    """
    rows = []
    for p in run.get("front") or []:
        if not isinstance(p, dict):
            continue
        row = (num(p.get("test_accuracy")), num(p.get("compression")), num(p.get("similarity")))
        if math.isfinite(row[0]) and math.isfinite(row[1]):
            rows.append(row)
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def nan_quantiles(stack: np.ndarray, qs=(25, 50, 75), axis: int = 0) -> list[np.ndarray]:
    """Per-column percentiles ignoring NaN (all-NaN columns give NaN, silently)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [np.nanpercentile(stack, q, axis=axis) for q in qs]


# --------------------------------------------------------------------------- drawing


def color_for(i: int) -> str:
    """Series ``i``'s colour: the Okabe-Ito :data:`PALETTE`, then matplotlib's tab20."""
    if i < len(PALETTE):
        return PALETTE[i]
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return matplotlib.colors.to_hex(cmap((i - len(PALETTE)) % 20))


def apply_style() -> None:
    """Paper-friendly defaults: readable sizes, light grid, embedded TrueType fonts."""
    import matplotlib

    matplotlib.rcParams.update({
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 8.5,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "grid.linewidth": 0.6,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.05,
    })


# --------------------------------------------------------------------------- saving


def render_figure(fig, dpi: int = 200) -> dict[str, bytes]:
    """The figure encoded in every format of :data:`FIGURE_FORMATS`, in memory."""
    out = {}
    for fmt in FIGURE_FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi)
        out[fmt] = buf.getvalue()
    return out


def save_figures(rendered: dict[str, dict[str, bytes]], out_dir) -> list[Path]:
    """Write ``{stem: {fmt: bytes}}`` as ``out_dir/stem.fmt``; returns the paths."""
    paths = []
    for stem, files in rendered.items():
        for fmt, data in files.items():
            path = Path(out_dir) / f"{stem}.{fmt}"
            write_bytes(path, data)
            paths.append(path)
    return paths


def save_figure(fig, out_dir, stem: str, dpi: int = 200) -> list[Path]:
    """Render ``fig`` to PNG and PDF and write both atomically; closes the figure."""
    import matplotlib.pyplot as plt

    try:
        rendered = {stem: render_figure(fig, dpi)}
    finally:
        plt.close(fig)
    return save_figures(rendered, out_dir)


# --------------------------------------------------------------------------- command line


def make_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser (one-line usage errors) whose description is the script's module docstring."""
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_args(parser: argparse.ArgumentParser, out_default: str, figures: bool = True) -> None:
    """Add ``--out`` (its help names ``out_default``), ``--dpi`` (with ``figures``) and
    ``--debug`` to ``parser``."""
    parser.add_argument("--out", metavar="DIR", default=None,
                        help=f"folder for the output files (default: {out_default})")
    if figures:
        parser.add_argument("--dpi", type=positive_int, default=200,
                            help="resolution of the PNG files in dots per inch (default: 200)")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full Python traceback instead of one line")


def folders_parser(doc: str | None, prog: str, folders_help: str = "experiment results folders "
                   "(OUT/NAME with run_K.json files)") -> argparse.ArgumentParser:
    """The parser of a plot script: results folders plus ``--out``, ``--dpi``, ``--debug``."""
    parser = make_parser(doc, prog=prog)
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help=folders_help)
    add_common_args(parser, "plots/ inside the first FOLDER")
    return parser


def plot_experiments(args, fields: Iterable[str], stem: str, draw: Callable) -> int:
    """Load ``args.folders`` (checking ``fields``), draw one figure, save it as PNG and
    PDF under ``--out`` (default: ``plots/`` in the first folder) and print the paths."""
    exps = load_experiments(args.folders, fields=fields)
    apply_style()
    for path in save_figure(draw(exps), args.out or default_plot_dir(args.folders), stem, args.dpi):
        print(path)
    return 0


def default_plot_dir(folders: Sequence) -> Path:
    """``plots/`` inside the first results folder given."""
    return Path(folders[0]) / "plots"


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run a plot or comparison script: :func:`ecomp_deap.study.cli.run_main`, where bad
    values and unreadable files are user errors too (one line, exit code 2)."""
    run_main(main, argv, extra_errors=(ValueError, OSError))
