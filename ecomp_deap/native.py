"""The perplexity search's fused C kernel (``csrc/perplexity.c``): built on first use
with the system's C compiler, cached, loaded through ctypes.

The kernel runs the plain Newton phase of :func:`ecomp_deap.similarity._newton_phase`
on float32 rows of a CPU tensor, one row at a time while it sits in L1 cache (one pass
over it per entropy evaluation instead of about seven array passes and two dozen
small numpy calls). Without a compiler, or with ``ECOMP_DEAP_NATIVE=0``, everything
runs as before in torch/numpy: same results to float32 rounding, about twice as slow
in the search.

The library is compiled once per source version and machine type into
``$ECOMP_DEAP_NATIVE_DIR`` (default ``~/.cache/ecomp_deap/native``): about a second,
the first time a float32 search runs on the CPU. ``CC`` chooses the compiler (default
``cc``). ``python -m ecomp_deap.native`` builds it and says where it is.
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

SOURCE = Path(__file__).with_name("csrc") / "perplexity.c"
FLAGS = ("-O3", "-shared", "-fPIC", "-Wno-psabi", "-Wno-unknown-pragmas", "-fno-strict-aliasing")
# OpenMP first (torch's own runtime, libgomp, is already loaded: the kernel's threads are its
# workers, not a second pool competing with them); without it the kernel runs on one thread
OPENMP_FLAGS = (("-fopenmp",), ())

_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "lib": the ctypes function, or None once a build failed


def enabled() -> bool:
    """False when ``ECOMP_DEAP_NATIVE`` is 0/false/no/off."""
    return os.environ.get("ECOMP_DEAP_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get("ECOMP_DEAP_NATIVE_DIR"):
        return Path(os.environ["ECOMP_DEAP_NATIVE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ecomp_deap" / "native"


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc")) or ["cc"]


def library_path() -> Path:
    """Where this source, compiler and machine type's build lives."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(repr((compiler(), FLAGS, OPENMP_FLAGS, platform.machine(), sys.platform)).encode())
    suffix = ".dll" if sys.platform == "win32" else ".so"
    return cache_dir() / f"perplexity-{key.hexdigest()[:16]}{suffix}"


def build(path: Path) -> None:
    """Compile the kernel to ``path``, with OpenMP if the compiler has it (written under a
    temporary name, then renamed: processes building at once never load a half-written
    file). Raises OSError or subprocess.CalledProcessError (the last attempt's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(path: Path):
    fn = ctypes.CDLL(str(path)).newton_rows_f32
    p, i, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    fn.argtypes = [p, i, i, i, i, p, f, f, i, i, f, f, f, p, p, p, p, i]
    fn.restype = None
    return fn


def newton_rows():
    """The kernel's ctypes function, building it if needed; None when disabled or when
    it cannot be built or loaded (then one warning says why, once per process)."""
    if not enabled():
        return None
    with _lock:
        if "lib" in _loaded:
            return _loaded["lib"]
        fn = None
        try:
            path = library_path()
            if not path.exists():
                build(path)
            fn = _bind(path)
        except subprocess.CalledProcessError as e:
            _warn(f"compiling {SOURCE.name} failed ({' '.join(compiler())}: "
                  f"{e.stderr.decode(errors='replace').strip().splitlines()[-1:] or e.returncode})")
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            _warn(f"{type(e).__name__}: {e}")
        _loaded["lib"] = fn
        return fn


def _warn(why: str) -> None:
    warnings.warn(f"ecomp_deap: the C perplexity kernel is not available ({why}); the search runs in "
                  "numpy, about twice as slow (set CC to a C compiler, or ECOMP_DEAP_NATIVE=0 to silence this)",
                  RuntimeWarning, stacklevel=3)


def reset() -> None:
    """Forget the loaded kernel (tests)."""
    with _lock:
        _loaded.clear()


if __name__ == "__main__":
    lib = newton_rows()
    if lib is not None:
        print(f"C perplexity kernel: {library_path()}")
    else:
        print("C perplexity kernel: " + ("not available" if enabled() else "switched off (ECOMP_DEAP_NATIVE=0)"))
    sys.exit(0 if lib is not None or not enabled() else 1)
