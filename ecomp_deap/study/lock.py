"""One run per experiment folder at a time: a lock file held for the run's lifetime.

Two commands that write the same ``OUT/NAME/`` would overwrite each other's checkpoints
and results (and one's ``--overwrite`` would delete the other's). The driver
(:func:`~ecomp_deap.study.runner.run_experiments`) holds ``OUT/NAME/.lock`` for every
experiment it runs, from before it touches the folder until it returns; different
names under one ``OUT`` do not exclude each other, since they share no file.

The lock is an exclusive ``flock`` on that file, which names its holder (pid, host,
start time). The kernel releases it when the holder dies, however it dies, so a lock
left by a killed run is taken over by the next one; a second run while the holder lives
stops with one line naming it. A file naming another host, found unlocked, may belong to
a run on a file system whose locks do not reach this host: it is refused with the file's
name, to delete if that run is gone. Without ``fcntl`` (not POSIX), a lock whose pid no
longer runs on this host counts as stale.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import UserError, WriteError

try:
    import fcntl
except ImportError:  # not POSIX: fall back on the pid
    fcntl = None

LOCK_NAME = ".lock"


class FolderBusy(UserError):
    """The experiment folder is in use by another run."""


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another run (pid unknown: its lock file is being written)"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"another run (pid {holder.get('pid')} on host {holder.get('host')}{since})"


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's process, or a pid we cannot read: assume it runs
    return True


def busy(folder, holder: str) -> FolderBusy:
    """The one-line error for ``folder``, in use by ``holder`` (in words)."""
    return FolderBusy(f"{folder} is in use by {holder}; wait for it to finish, or use another --out or --name")


class FolderLock:
    """The lock of one experiment ``folder`` (``folder/.lock``): :meth:`acquire` it (the
    folder is created if needed) or get a one-line :class:`FolderBusy`; :meth:`release`
    removes the file (and the folders acquire created, those that stayed empty)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []  # the folders acquire made, deepest first


    def acquire(self) -> "FolderLock":
        """Take the lock, or raise :class:`FolderBusy` naming its holder."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(100):
            missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError(f"cannot create {self.folder}: {e.strerror or e}", e.errno) from None
            self.created = self.created or missing
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except FileNotFoundError:  # the folder went away in between (a run that created it ended)
                continue
            except OSError as e:
                raise WriteError(f"cannot create {self.path}: {e.strerror or e}", e.errno) from None
            if not self._lock(fd):
                os.close(fd)
                raise busy(self.folder, _describe(_read(self.path)))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # released and removed while we waited for it: the next file is the lock
                os.close(fd)
                continue
            holder = _read(self.path)
            if holder and holder.get("host") != me["host"]:
                os.close(fd)
                raise FolderBusy(f"{self.folder} is in use by {_describe(holder)}, as far as this machine can tell; "
                                 f"if that run is gone, delete {self.path}")
            if fcntl is None and holder and _pid_alive(holder.get("pid")) and holder.get("pid") != me["pid"]:
                os.close(fd)
                raise busy(self.folder, _describe(holder))
            try:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(me).encode())
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                raise WriteError(f"cannot write {self.path}: {e.strerror or e}", e.errno) from None
            self.fd = fd
            return self
        raise busy(self.folder, _describe(_read(self.path)))

    @staticmethod
    def _lock(fd: int) -> bool:
        if fcntl is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        """Remove the lock file and let go of the lock; remove the folder if this lock
        created it and nothing else was written there."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: the next run finds a new file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        for folder in self.created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def folder_holder(folder) -> str | None:
    """Who holds ``folder``'s lock now, in words (None: nobody), without taking it: for
    refusing a busy folder before any work."""
    path = Path(folder) / LOCK_NAME
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _describe(_read(path))
            return None
        holder = _read(path)
        return _describe(holder) if holder and _pid_alive(holder.get("pid")) else None
    finally:
        os.close(fd)
