"""Where the runs of experiments execute: here, one after the other (``serial``, see
:meth:`Experiment.run`), or as tasks on a Dask cluster (``local``: a
``LocalCluster`` on this machine; ``dask``: an existing scheduler).

On a cluster every run is one task, :func:`run_task`: a pure function of the run's
config (with its seed), the parent network (shipped as a state dict, ~1 MB) and a
:class:`DataSpec`. The worker loads FashionMNIST itself from its own data folder
(once per worker process), checks it against the driver's fingerprint, runs EComp
and returns the result-file body and the chosen network. Only the driver writes
files (through :func:`ecomp_deap.study.experiment.write_run`, atomically, as runs
complete), so workers need no shared file system. A run's result depends only on
its config and seed, so every executor writes the same files (``wall_time_s`` aside).
"""
from __future__ import annotations

import os
import random as _stdlib_random
import sys
import threading
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from ..nets.chain import check_layers
from ..nets.export import LOADABLE, module_spec
from ..errors import ConfigError, DataError

EXECUTORS = ("serial", "local", "dask")
PARENT_FORMAT = "ecomp_deap.parent-payload/2"


# ------------------------------------------------------------------ the task side
@dataclass(frozen=True)
class DataSpec:
    """How a worker finds FashionMNIST: ``data_dir`` as the driver was given it (None:
    the worker's own default, ``$ECOMP_DATA_DIR`` or ``~/.cache/ecomp_deap/data``),
    and the fingerprint the driver's copy has (None: not checked)."""

    data_dir: str | None = None
    allow_download: bool = True
    fingerprint: str | None = None


_DATA_CACHE: dict[DataSpec, object] = {}


def worker_data(spec) -> object:
    """The dataset for a task: a :class:`DataSpec` is loaded once per process and
    cached; anything else (an in-memory data object shipped with the task) as is."""
    if not isinstance(spec, DataSpec):
        return spec
    data = _DATA_CACHE.get(spec)
    if data is None:
        from ..data import load_fashion_mnist

        data = load_fashion_mnist(spec.data_dir, allow_download=spec.allow_download)
        if spec.fingerprint is not None and data.fingerprint != spec.fingerprint:
            raise DataError(f"FashionMNIST on this worker ({data.source}) has fingerprint {data.fingerprint}, "
                            f"the driver's has {spec.fingerprint}: provision the same data on every machine")
        _DATA_CACHE[spec] = data
    return data


def parent_payload(model: nn.Module) -> dict:
    """The parent as plain tensors plus its layout: each layer's type and constructor
    arguments (what a task ships, not the module; the format of exported networks)."""
    check_layers(model)
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    return {"format": PARENT_FORMAT, "state_dict": state,
            "layers": [{"name": name, **module_spec(mod)} for name, mod in model.named_children()]}


def parent_from_payload(payload: dict) -> nn.Sequential:
    """Rebuild the parent of :func:`parent_payload`: the same layers, the same weights."""
    if not isinstance(payload, dict) or payload.get("format") != PARENT_FORMAT:
        raise ValueError("not a parent payload")
    layers = [(spec["name"], LOADABLE[spec["type"]](**spec["args"])) for spec in payload["layers"]]
    model = nn.Sequential(OrderedDict(layers))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


class ThreadRandom:
    """Stands in for the ``random`` module inside ``deap`` and ``ecomp_deap`` on a worker.

    DEAP's operators (``selTournamentDCD``, ``selNSGA2``) draw from the global
    ``random``; on a Dask worker the scheduler's own threads draw from it too
    (heartbeat jitter, choice of peers), which would shift a run's stream. Here every
    thread draws from its own ``random.Random``, seeded by the run as usual, so a run
    gets exactly the numbers it gets in a process of its own."""

    def __init__(self):
        self._local = threading.local()

    def _instance(self) -> _stdlib_random.Random:
        inst = getattr(self._local, "inst", None)
        if inst is None:
            inst = self._local.inst = _stdlib_random.Random()
        return inst

    def __getattr__(self, name):
        if not name.startswith("_") and hasattr(_stdlib_random.Random, name):
            return getattr(self._instance(), name)
        return getattr(_stdlib_random, name)


_THREAD_RANDOM = ThreadRandom()


def isolate_random() -> None:
    """Point every loaded ``deap``/``ecomp_deap`` module's ``random`` at :data:`_THREAD_RANDOM`
    (on workers only: the serial path keeps the plain module)."""
    # a snapshot taken in one C call (list(sys.modules.items()) can be interrupted by a
    # finalizer, and another thread's import then changes the dict under it: seen once as
    # "dictionary changed size during iteration" at a run's start on a local worker)
    for name, mod in sys.modules.copy().items():
        if (name == "deap" or name.startswith(("deap.", "ecomp_deap."))) and name != __name__ \
                and getattr(mod, "random", None) is _stdlib_random:
            mod.random = _THREAD_RANDOM


def run_task(config_dict: dict, name: str, k: int, parent: dict, data_spec,
             parent_test_accuracy: float | None = None, threads: int | None = 1) -> tuple[dict, nn.Sequential]:
    """One run on a worker: ``(RunResult.to_json(), the chosen network)``. Pure: the
    result depends only on the config (which holds the run's seed), the parent, the
    data and ``threads`` (torch threads; 1, the default, on a one-thread worker: no
    oversubscription; the serial path uses the same number, see ``Experiment.threads``)."""
    from ..config import EcompConfig
    from ..search.run import EcompRun

    torch.set_num_threads(threads or 1)
    isolate_random()
    cfg = EcompConfig.from_dict(config_dict)
    model = parent_from_payload(parent)
    data = worker_data(data_spec)
    r = EcompRun(cfg, model, data, progress=False, parent_test_accuracy=parent_test_accuracy).run()
    return r.to_json(), r.best_module


class RunFailed(Exception):
    """A run's error on a worker, carried back as text: whatever the original exception
    (unpicklable, or with a traceback too deep to send), the driver gets this one."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message, details)

    def __str__(self) -> str:
        return self.args[0]

    def __repr__(self) -> str:
        return f"RunFailed({self.args[0]!r})"

    @property
    def details(self) -> str:
        """The end of the worker's traceback."""
        return self.args[1]


def guarded(task: Callable, *args):
    """Run ``task(*args)`` on a worker; any error comes back as a :class:`RunFailed`."""
    import traceback

    try:
        return task(*args)
    except Exception as e:
        details = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-20))[-4000:]
        failure = RunFailed(_error_text(e), details)
    raise failure  # outside the handler: no __context__ chain to pickle


# ---------------------------------------------------------------- the driver side
@dataclass
class Failure:
    name: str
    run: int
    error: str


@dataclass
class Report:
    """What a distributed execution did: runs written, skipped (already finished), failed."""

    total: int = 0
    written: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RunFailed):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_on_cluster(experiments, client, parent_model: nn.Module, data_spec, parent_test_accuracy: float | None = None,
                   overwrite: bool = False, resume: bool = False, log: Callable[[str], None] = print,
                   log_error: Callable[[str], None] | None = None, task: Callable = run_task,
                   details: bool = False) -> Report:
    """Run every (unfinished) run of ``experiments`` as a task on ``client``'s cluster.

    Results are written here, by the driver, as tasks complete; a failing run is
    reported (``log_error``; with ``details``, followed by the end of the worker's
    traceback) and the others go on; each experiment's summary is written once all its
    runs exist. Returns a :class:`Report`.
    """
    from asyncio import CancelledError

    from distributed import as_completed

    from .experiment import run_line, write_run

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
            else:
                jobs.append((exp, k))
    report.total = len(jobs)
    open_runs = {exp.name: sum(1 for e, _ in jobs if e is exp) for exp in experiments}
    for exp in experiments:
        if open_runs[exp.name] == 0:
            exp.write_summary_from_files()
    if not jobs:
        return report

    payload = parent_payload(parent_model)
    tag = uuid.uuid4().hex[:8]
    futures = {}
    for exp, k in jobs:
        fut = client.submit(guarded, task, exp.run_config(k).to_dict(), exp.name, k, payload, data_spec,
                            parent_test_accuracy, exp.threads, key=f"ecomp-{exp.name}-run{k}-{tag}", pure=False)
        futures[fut] = (exp, k)
    handled: set[tuple[str, int]] = set()
    failed_exps: set[str] = set()
    try:
        for fut in as_completed(list(futures)):
            exp, k = futures[fut]
            if (exp.name, k) in handled:  # never write one run twice
                continue
            handled.add((exp.name, k))
            n = len(handled)
            try:
                result_json, module = fut.result()
            except (Exception, CancelledError) as exc:  # the run's own error, or its task's (KilledWorker, ...)
                report.failures.append(Failure(exp.name, k, _error_text(exc)))
                failed_exps.add(exp.name)
                log_error(f"[{n}/{report.total}] error: {exp.name} run {k + 1}/{exp.runs} "
                          f"(seed {exp.run_config(k).seed}) failed: {_error_text(exc)}")
                if details and isinstance(exc, RunFailed) and exc.details:
                    log_error(f"worker traceback (end):\n{exc.details.rstrip()}")
            else:
                body = write_run(exp.folder, exp.name, k, result_json, module)
                report.written.append((exp.name, k))
                log(f"[{n}/{report.total}] {run_line(exp.name, k, exp.runs, body)}")
            fut.release()
            open_runs[exp.name] -= 1
            if open_runs[exp.name] == 0 and exp.name not in failed_exps:
                exp.write_summary_from_files()
    finally:
        pending = [f for f, (exp, k) in futures.items() if (exp.name, k) not in handled]
        if pending:  # interrupted (Ctrl-C, a failed write): stop the cluster's work for us
            client.cancel(pending)
    return report


def default_workers() -> int:
    """The CPUs this process may use (its affinity mask, e.g. under ``taskset``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# How a machine's cores are used by default (issue #13). Measured on a 2-core machine
# (README, "Speed"): one run with 2 torch threads finishes two runs sooner than two
# one-thread runs side by side (they compete for the same caches and memory bus), so
# up to RUN_THREADS cores go to one run's threads; beyond that, independent runs in
# parallel processes (a local Dask cluster), RUN_THREADS threads each, scale better
# than more threads per run (a run's matrices are small: 100 images x a few hundred
# units). MAX_THREADS bounds the threads of a run that has a big machine to itself.
RUN_THREADS = 2
MAX_THREADS = 8


@dataclass(frozen=True)
class CorePlan:
    """Where ``tasks`` independent runs execute by default: ``executor`` 'serial' (one
    run after the other, with checkpoints) or 'local' (``workers`` processes), each run
    with ``threads`` torch threads."""

    executor: str
    workers: int
    threads: int

    def describe(self) -> str:
        if self.executor == "serial":
            return f"serial, {self.threads} torch thread(s) per run"
        return f"local cluster of {self.workers} worker process(es), {self.threads} torch thread(s) each"


def plan_cores(tasks: int, cores: int | None = None, executor: str | None = None,
               workers: int | None = None, threads: int | None = None) -> CorePlan:
    """The default use of ``cores`` (default: the CPUs available) for ``tasks`` runs;
    an ``executor``, ``workers`` or ``threads`` given by the user is kept and the rest
    fills the cores around it. The 'dask' executor (someone else's machines) gets
    ``threads`` or 1 per run."""
    cores = cores or default_workers()
    if executor == "dask":
        return CorePlan("dask", 0, threads or 1)
    if executor is None:  # several runs side by side once the cores outnumber one run's threads
        many = tasks > 1 and cores >= 2 * (threads or RUN_THREADS)
        executor = "local" if many or workers is not None else "serial"
    if executor == "serial":
        return CorePlan("serial", 1, threads or max(1, min(cores, MAX_THREADS)))
    if workers is None:
        per = threads or RUN_THREADS
        workers = max(1, min(tasks, cores // per))
    return CorePlan("local", workers, threads or max(1, min(cores // workers, MAX_THREADS)))


TLS_SETTINGS = {  # Dask setting -> its environment variable; the client's side of a TLS connection
    "distributed.comm.tls.ca-file": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "distributed.comm.tls.client.cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "distributed.comm.tls.client.key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
}


def tls_security(scheduler: str):
    """The ``distributed.Security`` for a ``tls://`` scheduler, from Dask's configuration
    (``distributed.comm.tls.*`` in ``~/.config/dask/*.yaml`` or ``DASK_DISTRIBUTED__COMM__TLS__*``).
    A one-line ConfigError names the settings that are missing or point at no file:
    the CA file and the client certificate are required, the key when it is not
    inside the certificate file."""
    import dask
    from distributed.security import Security

    missing, no_file = [], []
    for setting, env in TLS_SETTINGS.items():
        value = dask.config.get(setting, None)
        if not value:
            if not setting.endswith(".key"):  # the key may be in the certificate's PEM file
                missing.append(f"{setting} (or ${env})")
        elif not os.path.isfile(str(value)):
            no_file.append(f"{setting} = {value}")
    if missing:
        raise ConfigError(f"--scheduler {scheduler} needs Dask's TLS settings; missing: {', '.join(missing)}; set them "
                          "in ~/.config/dask/distributed.yaml or the environment (README: Dask over TLS)")
    if no_file:
        raise ConfigError(f"--scheduler {scheduler}: Dask's TLS settings name files that do not exist: "
                          f"{', '.join(no_file)}")
    return Security(require_encryption=True)


@contextmanager
def dask_client(executor: str, workers: int | None = None, scheduler: str | None = None) -> Iterator:
    """A ``distributed.Client``: on a new ``LocalCluster`` of ``workers`` one-thread
    worker processes (``local``) or connected to ``scheduler`` (``dask``; given up after
    Dask's ``distributed.comm.timeouts.connect``, 30 s unless configured); closed on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(f"--executor {executor} needs Dask: pip install 'dask[distributed]'") from None
    if executor == "local":
        with LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
    elif executor == "dask":
        if not scheduler:
            raise ConfigError("--executor dask needs --scheduler ADDRESS (e.g. tcp://HOST:8786)")
        kwargs = {"security": tls_security(scheduler)} if scheduler.startswith("tls://") else {}
        try:
            client = Client(scheduler, **kwargs)
        except (OSError, TimeoutError, ValueError) as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} ({_error_text(e)})") from None
        with client:
            yield client
    else:
        raise ConfigError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
