"""Running experiments: every run, whatever executes it, goes through one path.

* :func:`execute_run` is one run from its last checkpoint (or generation 0) to its
  result, with checkpoints every ``checkpoint_every`` generations and on a stop request.
  It runs in this process (:class:`SerialExecutor`) or as a task on a Dask worker
  (:class:`~ecomp_deap.study.executors.ClusterExecutor`); only the store of its
  checkpoints differs (a file here, the scheduler on a cluster, mirrored to the same
  file by the driver), so a run whose worker dies resumes from its last checkpoint on
  another worker.
* :func:`run_experiments` is the driver: it locks the output folders (one driver per
  folder), checks them and any checkpoint it will resume from before any work, hands
  the runs left to an executor,
  writes each result as it arrives (:func:`~ecomp_deap.study.experiment.write_run`),
  reports a failing run and goes on with the others, writes each experiment's summary
  once all its runs exist, and on SIGINT/SIGTERM stops at the end of the generation
  with every unfinished run checkpointed (:class:`RunInterrupted`). A failed write (a
  full disk) stops every run at once: one line naming the file, nothing half-written.
"""
from __future__ import annotations

import signal
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import WriteError
from ..nets.reader import read_parent
from ..rng import rng_snapshot
from ..search.genome import fitness_weights, make_types
from ..search.run import EcompRun, RunData, check_data
from .checkpoint import CheckpointStore, FileStore, checkpoint_bytes, read_checkpoint, restore_state
from .experiment import Experiment, RunJob, run_line, write_run
from .lock import FolderLock


@contextmanager
def torch_threads(n: int | None):
    """Torch's intra-op threads set to ``n`` inside (None: unchanged), restored after.
    Parallel reductions split their sums by thread, so the last bits of a run's
    measures (and from there its selections) depend on this number."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def closed_after(outcomes):
    """``outcomes`` (an executor's iterator) inside; closed on any exit, here and now: a
    cluster executor then cancels its work and mirrors the checkpoints before the error
    that stopped the loop propagates (not whenever the generator is collected)."""
    try:
        yield outcomes
    finally:
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()


class RunInterrupted(Exception):
    """Runs stopped on SIGINT/SIGTERM after writing their checkpoints."""

    def __init__(self, message: str, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {message}")
        self.signum = signum


class StopRequest:
    """While active, SIGINT/SIGTERM only set a flag (runs checkpoint and stop at the end
    of their generation); a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class RunOutcome:
    """A finished run: its result-file body (without name and run), its chosen network,
    and the generation it resumed from (None: it ran from the start)."""

    result_json: dict
    module: torch.nn.Module
    resumed_from: int | None = None


def execute_run(job: RunJob, parent, data, store: CheckpointStore, stop: StopRequest | None = None,
                progress: bool = False, log: Callable[[str], None] = print,
                parent_test_accuracy: float | None = None) -> RunOutcome:
    """Run ``job`` on ``parent`` (read once, :func:`~ecomp_deap.nets.reader.read_parent`) and
    ``data`` (checked once, :func:`~ecomp_deap.search.run.check_data`), from the checkpoint in
    ``store`` if it holds one. Checkpoints go to ``store`` every ``job.checkpoint_every``
    generations, before a failing generation's error propagates, and when ``stop`` has
    caught a signal (then :class:`RunInterrupted`)."""
    cfg = job.config
    with torch_threads(job.threads):
        run = EcompRun(cfg, parent, data, progress, parent_test_accuracy)
        state, elapsed_before = None, 0.0
        saved = store.load()
        if saved is not None:
            _, ind_cls = make_types(fitness_weights(cfg.selection, cfg.weights))
            where = store.describe()
            state, elapsed_before = restore_state(read_checkpoint(saved, cfg, where), ind_cls, run.rng, where)
            log(f"{job.label}: resuming from generation {state.t}/{run.total}")
        resumed_from = state.t if state is not None else None
        started = time.perf_counter()

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - started

        def on_generation(st) -> None:
            stopping = stop is not None and stop.signum is not None
            due = job.checkpoint_every and st.t % job.checkpoint_every == 0 and st.t < run.total
            if due or stopping:
                store.save(checkpoint_bytes(st, cfg, rng_snapshot(run.rng), elapsed()))
            if stopping:
                raise RunInterrupted(f"{job.label} stopped after generation {st.t}/{run.total}; checkpoint "
                                     f"{store.describe()}", stop.signum)

        def on_failure(st, rng) -> None:
            store.save(checkpoint_bytes(st, cfg, rng, elapsed()))
            log(f"{job.label}: non-finite measure at generation {st.t}; checkpoint {store.describe()}")

        r = run.run(state, on_generation, on_failure, elapsed_before_s=elapsed_before)
        return RunOutcome(r.to_json(), r.best_module, resumed_from)


@dataclass
class Failure:
    """A run that failed: its experiment's ``name``, the ``run`` number, the ``error`` in
    one line and the ``exception`` itself."""

    name: str
    run: int
    error: str
    exception: BaseException | None = None


@dataclass
class Report:
    """What an execution did: runs written, skipped (already finished), failed."""

    total: int = 0
    written: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def raise_first_failure(self) -> None:
        """Raise the first failed run's error (for callers that want an exception)."""
        if self.failures:
            raise self.failures[0].exception or RuntimeError(self.failures[0].error)


def error_text(exc: BaseException) -> str:
    """One line for a run's error: its own text for a worker's ``RunFailed``, else 'Type: first line'."""
    if type(exc).__name__ == "RunFailed":
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class SerialExecutor:
    """Runs one after the other in this process, checkpoints in ``OUT/NAME/run_K.ckpt``."""

    numbered_progress = True

    def __init__(self, progress: bool = True):
        self.progress = progress

    def execute(self, jobs: list[tuple[Experiment, RunJob]], parent, data, parent_test_accuracy, stop: StopRequest,
                log) -> Iterator[tuple[Experiment, RunJob, RunOutcome | BaseException]]:
        """Each job's outcome (or error) in turn; RunInterrupted and KeyboardInterrupt propagate."""
        for exp, job in jobs:
            try:
                outcome = execute_run(job, parent, data, FileStore(exp.checkpoint_path(job.k)), stop, self.progress,
                                      log, parent_test_accuracy)
            except (RunInterrupted, KeyboardInterrupt, WriteError):  # a failed write stops every run
                raise
            except Exception as e:  # the run's own error: reported, the others go on
                outcome = e
            yield exp, job, outcome


def run_experiments(experiments: list[Experiment], parent, data, executor, parent_test_accuracy: float | None = None,
                    overwrite: bool = False, resume: bool = False, log: Callable[[str], None] = print,
                    log_error: Callable[[str], None] | None = None, details: bool = False) -> Report:
    """Run every (unfinished, with ``resume``) run of ``experiments`` on ``executor`` and
    write the results here as they complete; see the module docstring. A failing run is
    reported (``log_error``; with ``details``, followed by the end of its traceback) and
    the others go on. ``parent`` and ``data``: read and checked once by the caller (a
    :class:`~ecomp_deap.nets.reader.Parent` and :class:`~ecomp_deap.search.run.RunData`),
    or else here, before any folder is touched. Each experiment folder is locked
    (:class:`~.lock.FolderLock`) from before it is touched until this returns: a second
    driver on the same folder stops with one line naming this one. A file that cannot be
    written (a full disk) stops every run with one :class:`~ecomp_deap.errors.WriteError`
    line; finished results and the last checkpoints stay as they were, for ``resume``.
    Returns a :class:`Report`."""
    parent = read_parent(parent, data.train_x)  # a Parent is returned as it is
    if not isinstance(data, RunData):
        data = check_data(parent, data)
    if hasattr(executor, "check"):  # e.g. whether the workers can rebuild the parent
        executor.check(parent)
    folders = {exp.folder.absolute(): exp.folder for exp in experiments}
    with ExitStack() as held:
        for folder in sorted(folders):  # held until every result is written (or the runs stop)
            held.enter_context(FolderLock(folders[folder]))
        try:
            return _run_held(experiments, parent, data, executor, parent_test_accuracy, overwrite, resume, log,
                             log_error, details)
        except WriteError as e:
            raise WriteError(f"{e}; the runs stopped, finished results and the last checkpoints are kept: once it "
                             "can be written, run the same command with --resume", e.errno) from None


def _run_held(experiments, parent, data, executor, parent_test_accuracy, overwrite, resume, log, log_error,
              details) -> Report:
    """:func:`run_experiments` once the folders are locked."""
    import sys
    import traceback

    log_error = log_error or (lambda s: print(s, file=sys.stderr))
    for exp in experiments:
        exp.prepare(overwrite, resume)
    report = Report()
    jobs = []
    for exp in experiments:
        for k in range(exp.runs):
            if resume and exp.finished(k):
                report.skipped.append((exp.name, k))
                log(f"{exp.name} run {k + 1}/{exp.runs}: already finished, skipped")
                continue
            job = exp.job(k)
            path = exp.checkpoint_path(k)
            if resume and path.exists():  # refused here, before any work, if it cannot be resumed
                read_checkpoint(FileStore(path).load(), job.config, str(path))
            jobs.append((exp, job))
    report.total = len(jobs)
    open_runs = {exp.name: sum(1 for e, _ in jobs if e is exp) for exp in experiments}
    for exp in experiments:
        if open_runs[exp.name] == 0:
            exp.write_summary_from_files()
    if not jobs:
        return report
    failed: set[str] = set()
    with StopRequest() as stop, closed_after(executor.execute(jobs, parent, data, parent_test_accuracy, stop, log)) as outcomes:
        for exp, job, outcome in outcomes:
            n = len(report.written) + len(report.failures) + 1
            if isinstance(outcome, BaseException):
                text = error_text(outcome)
                report.failures.append(Failure(exp.name, job.k, text, outcome))
                failed.add(exp.name)
                log_error(f"[{n}/{report.total}] error: {job.label} (seed {job.config.seed}) failed: {text}")
                trace = getattr(outcome, "details", None) or "".join(
                    traceback.format_exception(type(outcome), outcome, outcome.__traceback__, limit=-20))[-4000:]
                if details and trace:
                    log_error(f"traceback (end):\n{trace.rstrip()}")
            else:
                body = write_run(exp.folder, exp.name, job.k, outcome.result_json, outcome.module)
                report.written.append((exp.name, job.k))
                resumed = f" (resumed from generation {outcome.resumed_from})" if outcome.resumed_from else ""
                log(f"[{n}/{report.total}] {run_line(exp.name, job.k, exp.runs, body)}{resumed}")
            open_runs[exp.name] -= 1
            if open_runs[exp.name] == 0 and exp.name not in failed:
                exp.write_summary_from_files()
            if stop.signum is not None and n < report.total:
                raise RunInterrupted(f"{n} of {report.total} runs finished", stop.signum)
    return report
