"""Runs on a Dask cluster (``local``: a ``LocalCluster`` on this machine; ``dask``: an
existing scheduler), and the default use of a machine's cores (:func:`plan_cores`).

On a cluster every run is one task, :func:`run_task`: the same
:func:`~ecomp_deap.study.runner.execute_run` as a serial run, a pure function of the
run's job (its config holds its seed), the parent (shipped as a state dict and its
layout) and a :class:`DataSpec`. The worker loads FashionMNIST itself from its own data
folder (once per worker process), checks it against the driver's fingerprint, runs the
run and returns its outcome; checkpoints go to the scheduler (:class:`VariableStore`),
so a task that Dask starts again after its worker died resumes from the last one. Only
the driver writes files (:func:`~ecomp_deap.study.runner.run_experiments`), so workers
need no shared file system. A run's result depends only on its config, seed and torch
threads, so every executor writes the same files (timings aside).
"""
from __future__ import annotations

import os
import random as _stdlib_random
import sys
import threading
import uuid
from asyncio import CancelledError
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from torch import nn

from ..errors import ConfigError, DataError, WriteError
from ..files import write_bytes
from ..nets.chain import check_layers
from ..nets.export import LOADABLE, module_spec
from .checkpoint import CheckpointStore
from .experiment import RunJob
from .runner import RunInterrupted, RunOutcome, error_text, execute_run

EXECUTORS = ("serial", "local", "dask")
PARENT_FORMAT = "ecomp_deap.parent-payload/2"
GRAPH_PARENT_FORMAT = "ecomp_deap.graph-parent-payload/1"


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


def parent_payload(parent) -> dict:
    """What a task ships of the parent (a :class:`~ecomp_deap.nets.reader.Parent`): plain
    tensors plus a chain's layout (each layer's type and constructor arguments), or a graph
    parent's state dict and how a worker rebuilds its module (``parent.source``: a default
    parent's spec, or the ``--model`` builder); a one-line ConfigError for a graph parent
    that cannot be rebuilt elsewhere."""
    model = parent.model
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    if parent.net.kind == "graph":
        if parent.source is None:
            raise ConfigError(f"this parent ({type(model).__name__}) can only run here (--executor serial): workers "
                              "rebuild a graph parent from --model FILE.py:FUNCTION or --arch")
        return {"format": GRAPH_PARENT_FORMAT, "state_dict": state, "source": parent.source}
    check_layers(model)
    return {"format": PARENT_FORMAT, "state_dict": state,
            "layers": [{"name": name, **module_spec(mod)} for name, mod in model.named_children()]}


def parent_from_payload(payload: dict) -> tuple[nn.Module, dict | None]:
    """Rebuild the parent of :func:`parent_payload`: the same module, the same weights;
    and its source (None for a chain)."""
    if not isinstance(payload, dict) or payload.get("format") not in (PARENT_FORMAT, GRAPH_PARENT_FORMAT):
        raise ValueError("not a parent payload")
    if payload["format"] == GRAPH_PARENT_FORMAT:
        from ..nets.parents import ParentSpec, build_parent, import_builder

        source = payload["source"]
        if source["kind"] == "spec":
            model = build_parent(ParentSpec(**source["spec"]))
        else:
            model = import_builder(source["ref"])()
        model.load_state_dict(payload["state_dict"])
        return model.eval(), source
    layers = [(spec["name"], LOADABLE[spec["type"]](**spec["args"])) for spec in payload["layers"]]
    model = nn.Sequential(OrderedDict(layers))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), None


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


class VariableStore(CheckpointStore):
    """A run's checkpoints on a cluster: the latest one held by the scheduler under ``key``
    (a ``distributed.Variable``), so that a task started again after its worker died (Dask
    reruns it elsewhere) resumes from it; ``initial``: the checkpoint file the driver
    resumes from, used until the run saves its own. The driver mirrors it to
    ``run_K.ckpt`` when the run does not finish (:class:`ClusterExecutor`)."""

    def __init__(self, key: str, initial: bytes | None = None):
        self.key, self.initial = key, initial

    def _variable(self):
        from distributed import Variable

        return Variable(self.key)

    def save(self, data: bytes) -> None:
        self._variable().set(data)

    def load(self) -> bytes | None:
        latest = latest_checkpoint(self._variable())
        return latest if latest is not None else self.initial

    def clear(self) -> None:
        self._variable().delete()

    def describe(self) -> str:
        return f"the scheduler's checkpoint {self.key}"


def latest_checkpoint(variable, timeout: float = 0.5) -> bytes | None:
    """The bytes a :class:`VariableStore`'s variable holds, or None when none was set."""
    try:
        value = variable.get(timeout=timeout)
    except TimeoutError:
        return None
    return value if isinstance(value, bytes) else None


def run_task(job: dict, parent: dict, data_spec, parent_test_accuracy: float | None, key: str,
             initial: bytes | None = None, data_accuracy=None) -> RunOutcome:
    """One run on a worker (:func:`~ecomp_deap.study.runner.execute_run`, checkpoints in a
    :class:`VariableStore`): a pure function of the job (its config holds the run's seed),
    the parent, the data and the job's torch threads (1 unless told: a one-thread worker
    is not oversubscribed). The worker reads the parent and checks its own data once per
    task: it is a new process. ``data_accuracy``: the parent's accuracy on the data as the
    driver measured it (:class:`~ecomp_deap.nets.parent_accuracy.DataAccuracy`), kept."""
    from ..config import EcompConfig
    from ..nets.reader import read_parent
    from ..search.run import RunData, check_data

    isolate_random()
    job = RunJob(**{**job, "config": EcompConfig.from_dict(job["config"]), "threads": job["threads"] or 1})
    model, source = parent_from_payload(parent)
    data = worker_data(data_spec)
    read = read_parent(model, data.train_x, source)
    checked = data if isinstance(data, RunData) else check_data(read, data, data_accuracy=data_accuracy)
    return execute_run(job, read, checked, VariableStore(key, initial), progress=False, log=lambda s: None,
                       parent_test_accuracy=parent_test_accuracy)


def job_payload(job: RunJob) -> dict:
    """A :class:`RunJob` as plain data, for a task."""
    return {"name": job.name, "k": job.k, "runs": job.runs, "config": job.config.to_dict(), "threads": job.threads,
            "checkpoint_every": job.checkpoint_every}


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
        failure = RunFailed(error_text(e), details)
    raise failure  # outside the handler: no __context__ chain to pickle


# ---------------------------------------------------------------- the driver side
class ClusterExecutor:
    """Runs as tasks on a Dask cluster (``client``): each run one task (``task``, by default
    :func:`run_task`), the parent shipped as plain tensors and its layout, the data as a
    :class:`DataSpec` each worker loads itself (``data_spec``; None: the checked data are
    shipped with every task). Outcomes come back as tasks complete; runs that do not
    finish (failed, interrupted) have their last checkpoint mirrored to ``run_K.ckpt``
    here, so ``--resume`` continues them with any executor."""

    numbered_progress = True

    def __init__(self, client, data_spec=None, task: Callable = run_task, tag: str | None = None):
        self.client, self.data_spec, self.task = client, data_spec, task
        self.tag = tag or uuid.uuid4().hex[:8]

    def check(self, parent) -> None:
        """Before any folder is touched: a one-line ConfigError for a parent the workers
        could not rebuild (:func:`parent_payload`)."""
        if parent.net.kind == "graph" and parent.source is None:
            parent_payload(parent)

    def checkpoint_key(self, job: RunJob) -> str:
        """The name of the scheduler variable that holds ``job``'s latest checkpoint (unique
        to this executor's ``tag``)."""
        return f"ecomp-ckpt-{self.tag}-{job.name}-run{job.k}"

    def execute(self, jobs, parent, data, parent_test_accuracy, stop, log):
        """Each job's outcome (or error) as its task completes; RunInterrupted when ``stop``
        catches a signal (the cluster's work for us is cancelled)."""
        from distributed import Variable, wait

        payload = parent_payload(parent)
        data_arg = self.data_spec if self.data_spec is not None else data
        futures = {}
        for exp, job in jobs:
            path = exp.checkpoint_path(job.k)
            initial = path.read_bytes() if path.exists() else None  # checked by the driver already
            fut = self.client.submit(guarded, self.task, job_payload(job), payload, data_arg, parent_test_accuracy,
                                     self.checkpoint_key(job), initial, getattr(data, "data_accuracy", None),
                                     key=f"ecomp-{job.name}-run{job.k}-{self.tag}", pure=False)
            futures[fut] = (exp, job)
        handled: set = set()
        pending = list(futures)
        try:
            while pending:
                try:
                    done, not_done = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done, not_done = set(), pending
                pending = [f for f in pending if f in not_done]
                for fut in [f for f in futures if f in done]:  # in submission order
                    exp, job = futures[fut]
                    if (exp.name, job.k) in handled:  # never write one run twice
                        continue
                    handled.add((exp.name, job.k))
                    try:
                        outcome = fut.result()
                    except (Exception, CancelledError) as exc:  # the run's own error, or its task's (KilledWorker, ...)
                        outcome = exc
                    else:
                        Variable(self.checkpoint_key(job), self.client).delete()
                    fut.release()
                    yield exp, job, outcome
                if stop is not None and stop.signum is not None and pending:
                    raise RunInterrupted(f"{len(handled)} of {len(futures)} runs finished; the others checkpointed",
                                         stop.signum)
        finally:
            unfinished = [f for f in futures if f in pending]
            if unfinished:  # interrupted (a signal, Ctrl-C, a failed write): stop the cluster's work for us
                self.client.cancel(unfinished)
            for fut, (exp, job) in futures.items():  # every run not written: its last checkpoint, for --resume
                if fut in unfinished or not (exp.folder / f"run_{job.k}.json").exists():
                    try:
                        self._mirror(exp, job)
                    except WriteError as e:  # a full disk: the others are still tried; the file before is kept
                        log(f"{job.label}: its last checkpoint was not saved ({e}); it resumes from the one before")

    def _mirror(self, exp, job) -> None:
        from distributed import Variable

        variable = Variable(self.checkpoint_key(job), self.client)
        data = latest_checkpoint(variable, timeout=1.0)
        if data is not None:
            write_bytes(exp.checkpoint_path(job.k), data)
            variable.delete()


def default_workers() -> int:
    """The CPUs this process may use (its affinity mask, e.g. under ``taskset``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# How a machine's cores are used by default (measurements: docs/benchmarks.md, "Cores"):
# one run with 2 torch threads finishes two runs sooner than two
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
        """The plan in words, for the log."""
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


ENCRYPTED_SCHEMES = ("tls", "wss")  # Dask's transports that authenticate both ends by certificates
LOCAL_SCHEMES = ("inproc",)  # within this process


def check_scheduler(address: str, insecure: bool = False) -> None:
    """Refuse (one ConfigError line) a scheduler reached over a plain transport (``tcp://``,
    no scheme, ``ws://``, ``ucx://``) on another host, unless ``insecure``: Dask moves
    tasks and results as pickles, so whoever reaches such a scheduler can run code on its
    workers and on this machine. ``tls://`` and loopback addresses (``localhost``,
    127.0.0.0/8, ``[::1]``) pass."""
    import ipaddress
    from urllib.parse import urlsplit

    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    scheme = scheme.lower()
    if insecure or scheme in ENCRYPTED_SCHEMES or scheme in LOCAL_SCHEMES:
        return
    try:
        host = urlsplit(f"{scheme}://{rest}").hostname or ""
    except ValueError:
        host = ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"--scheduler {address}: a plain {scheme}:// connection to another host; Dask moves tasks "
                          "and results as pickles, so whoever reaches this scheduler can run code on its workers and "
                          "on this machine: use tls:// (README: Dask over TLS), or --insecure-scheduler on a network "
                          "only you can reach")


@contextmanager
def dask_client(executor: str, workers: int | None = None, scheduler: str | None = None,
                insecure: bool = False) -> Iterator:
    """A ``distributed.Client``: on a new ``LocalCluster`` of ``workers`` one-thread
    worker processes (``local``) or connected to ``scheduler`` (``dask``; given up after
    Dask's ``distributed.comm.timeouts.connect``, 30 s unless configured); closed on exit.
    A plain-transport scheduler on another host is refused unless ``insecure``
    (:func:`check_scheduler`)."""
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
        check_scheduler(scheduler, insecure)
        kwargs = {"security": tls_security(scheduler)} if scheduler.startswith("tls://") else {}
        try:
            client = Client(scheduler, **kwargs)
        except (OSError, TimeoutError, ValueError) as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} ({error_text(e)})") from None
        with client:
            yield client
    else:
        raise ConfigError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
