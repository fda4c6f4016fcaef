"""Files written atomically, and JSON read back with one-line errors.

Every file is written to a temporary file in the destination folder, flushed and
fsynced, then renamed over the destination, so a reader (or a process killed at
any moment) never sees a partial file. The temporary file is created with mode 0666
less the umask (0644 under the usual 022), as ``open`` would: results on a shared
machine are readable by whoever the user's umask lets read them.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from .errors import ResultsError, WriteError


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new, empty ``.NAME.RANDOM.tmp`` next to ``path``, opened for writing with mode
    0666 & ~umask (``tempfile.mkstemp`` would force 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name next to {path}")


def atomic_write(path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(f)`` atomically: temporary file in the same
    folder (mode 0666 less the umask), fsync, rename over ``path``, fsync the folder.
    A failed write (a full disk, a quota, a read-only folder) is one
    :class:`~ecomp_deap.errors.WriteError` line naming ``path`` and the system's error,
    with ``path`` as it was before and no temporary file left."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = e.strerror or str(e)
    code = f" [{errno.errorcode[e.errno]}]" if e.errno in errno.errorcode else ""
    return WriteError(f"cannot write {path}: {reason}{code}", e.errno)


def _json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def save_json(path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically: numpy and torch values as plain lists
    and numbers (``tolist``, ``item``), NaN and infinities as null."""
    text = json.dumps(_finite_or_none(json.loads(json.dumps(data, default=_json_default))), indent=1)
    atomic_write(Path(path), lambda f: f.write(text.encode() + b"\n"))


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` atomically (temporary file in the same folder, fsync, rename)."""
    atomic_write(Path(path), lambda f: f.write(data))


def save_text(path, text: str) -> None:
    """Write ``text``, UTF-8 encoded, atomically."""
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_csv(path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Write ``rows`` (dicts) as CSV with a header, atomically: columns ``fieldnames``
    (default: the first row's keys), any other key left out."""
    fieldnames = fieldnames or (list(rows[0].keys()) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    save_text(path, buf.getvalue())


def save_torch(path, obj: Any) -> None:
    """Write ``obj`` with ``torch.save``, atomically (serialised in memory first, so that a
    failed write is the file system's error, not torch's)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def load_json(path, if_damaged: str = "") -> Any:
    """The JSON in ``path``; a one-line :class:`~ecomp_deap.errors.ResultsError` when the
    file is missing, unreadable or not valid JSON (then ending with ``if_damaged``, what
    to do about it)."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: not valid JSON ({e}){if_damaged}") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot read it ({e.strerror or e})") from None
