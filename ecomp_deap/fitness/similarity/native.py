"""The float32 similarity's C kernels (``csrc/similarity.c``): built on first use with
the system's C compiler, cached, loaded through ctypes.

* ``newton_rows``: the plain Newton phase of the perplexity search
  (:func:`ecomp_deap.fitness.similarity.loss._newton_phase`) on float32 rows of a CPU tensor, one
  row at a time while it sits in L1 cache (one pass over it per entropy evaluation
  instead of about seven array passes and two dozen small numpy calls);
* ``kl``: the child's joint Q from its conditionals and KL(P || Q) against the parent's
  P, one matrix at a time (instead of six passes over float64 copies);
* ``distances``: float32 squared distances from centred Gram matrices in place
  (:func:`ecomp_deap.fitness.similarity.loss.distances_from_gram`'s arithmetic in one pass instead of
  three).

Without a compiler, or with ``ECOMP_DEAP_NATIVE=0``, everything runs as before in
torch/numpy: the same results to float32 rounding, slower in the search.

The library is compiled once per source version and machine type into
``$ECOMP_DEAP_NATIVE_DIR`` (default ``~/.cache/ecomp_deap/native``), the first time a float32 search runs on the CPU. ``CC`` chooses the compiler (default
``cc``). ``python -m ecomp_deap.fitness.similarity.native`` builds them and says where they are.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

SOURCE = Path(__file__).with_name("csrc") / "similarity.c"
FLAGS = ("-O3", "-shared", "-fPIC", "-Wno-psabi", "-Wno-unknown-pragmas", "-fno-strict-aliasing")
# OpenMP first (torch's own runtime, libgomp, is already loaded: the kernel's threads are its
# workers, not a second pool competing with them); without it the kernel runs on one thread
OPENMP_FLAGS = (("-fopenmp",), ())

USE = True  # whether float32 CPU work takes the kernels where they build (tests switch it off)
_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "lib": the kernels, or None once a build failed


def enabled() -> bool:
    """False when ``ECOMP_DEAP_NATIVE`` is 0/false/no/off."""
    return os.environ.get("ECOMP_DEAP_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where the built kernels are kept: ``$ECOMP_DEAP_NATIVE_DIR``, else
    ``$XDG_CACHE_HOME/ecomp_deap/native`` (default ``~/.cache/ecomp_deap/native``)."""
    if os.environ.get("ECOMP_DEAP_NATIVE_DIR"):
        return Path(os.environ["ECOMP_DEAP_NATIVE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ecomp_deap" / "native"


def compiler() -> list[str]:
    """The C compiler's command as a list: ``$CC`` split as a shell would (default ``cc``)."""
    return shlex.split(os.environ.get("CC", "cc")) or ["cc"]


def library_path() -> Path:
    """Where this source, compiler and machine type's build lives."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(repr((compiler(), FLAGS, OPENMP_FLAGS, platform.machine(), sys.platform)).encode())
    suffix = ".dll" if sys.platform == "win32" else ".so"
    return cache_dir() / f"similarity-{key.hexdigest()[:16]}{suffix}"


def build(path: Path) -> None:
    """Compile the kernel to ``path``, with OpenMP if the compiler has it (written under a
    temporary name, then renamed: processes building at once never load a half-written
    file). Raises OSError or subprocess.CalledProcessError (the last attempt's)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + "-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        for i, extra in enumerate(OPENMP_FLAGS):
            try:
                subprocess.run([*compiler(), *FLAGS, *extra, "-o", tmp, str(SOURCE), "-lm"], check=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
                break
            except subprocess.CalledProcessError:
                if i == len(OPENMP_FLAGS) - 1:
                    raise
        os.chmod(tmp, 0o700)  # private whatever the umask (see _check_private)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_private(path: Path) -> None:
    """Refuse to load a library that someone else could have written (a shared or
    planted cache folder): it must be this user's, and neither it nor its folder
    writable by group or others. Raises PermissionError."""
    if not hasattr(os, "getuid"):
        return
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise PermissionError(f"{p} is not private to this user (owner {st.st_uid}, mode {oct(st.st_mode & 0o777)}); "
                                  "not loading code from it")


def _bind(path: Path) -> SimpleNamespace:
    _check_private(path)
    lib = ctypes.CDLL(str(path))
    p, i, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    signatures = {"newton_rows": ("newton_rows_f32", [p, i, i, i, i, p, f, f, i, i, f, f, f, p, p, p, p, i]),
                  "kl": ("kl_from_conditionals_f32", [p, i, i, p, i, p, f, p, i]),
                  "distances": ("distances_from_gram_f32", [p, p, i, i, i])}
    fns = {}
    for name, (symbol, argtypes) in signatures.items():
        fn = getattr(lib, symbol)
        fn.argtypes, fn.restype = argtypes, None
        fns[name] = fn
    return SimpleNamespace(**fns)


def kernels() -> SimpleNamespace | None:
    """The kernels' ctypes functions (``newton_rows``, ``kl``, ``distances``), building them if needed;
    None when disabled or when they cannot be built or loaded (then one warning says
    why, once per process)."""
    if not enabled():
        return None
    with _lock:
        if "lib" in _loaded:
            return _loaded["lib"]
        lib = None
        try:
            path = library_path()
            if not path.exists():
                build(path)
            lib = _bind(path)
        except subprocess.CalledProcessError as e:
            last = e.stderr.decode(errors="replace").strip().splitlines()
            _warn(f"compiling {SOURCE.name} failed: {' '.join(compiler())}: "
                  + (last[-1] if last else f"exit status {e.returncode}"))
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            _warn(f"{type(e).__name__}: {e}")
        _loaded["lib"] = lib
        return lib


def _warn(why: str) -> None:
    warnings.warn(f"ecomp_deap: the C similarity kernels are not available ({why}); the similarity runs in "
                  "torch/numpy, more slowly (set CC to a C compiler, or ECOMP_DEAP_NATIVE=0 to silence this)",
                  RuntimeWarning, stacklevel=3)


def reset() -> None:
    """Forget the loaded kernel (tests)."""
    with _lock:
        _loaded.clear()


def for_tensor(t):
    """The kernels (``newton_rows``, ``kl``, ``distances``) when they apply to ``t``
    (float32 on the CPU) and are available (built on first use), else None."""
    if not USE or str(t.dtype) != "torch.float32" or t.device.type != "cpu":
        return None
    return kernels()


if __name__ == "__main__":
    lib = kernels()
    if lib is not None:
        print(f"C similarity kernels: {library_path()}")
    else:
        print("C similarity kernels: " + ("not available" if enabled() else "switched off (ECOMP_DEAP_NATIVE=0)"))
    sys.exit(0 if lib is not None or not enabled() else 1)

