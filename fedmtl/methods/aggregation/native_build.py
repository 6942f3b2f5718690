"""Small C++ kernels built by the system's compiler on first use, cached on disk, loaded with ctypes.

Shared by :mod:`.native_network` (order statistics) and :mod:`.native_projection` (PCGrad's and FedFV's
conflict projections). A kernel is built by ``$CXX``, else ``c++``, and kept in a cache folder
(``$FEDMTL_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/fedmtl/kernels``, else ``~/.cache/fedmtl/kernels``)
under a name that hashes the source, the flags, the compiler and the CPU's features, so another machine
sharing the folder builds its own. The build runs in a scratch folder inside the cache and is renamed into
place, so processes that build it at once each leave a whole file. Without a compiler, or when the build
fails or hangs, :func:`load_or_warn` logs why and returns ``None``, and the caller keeps its torch code,
which gives the same bits (each kernel's tests check it).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

COMPILE_TIMEOUT_S = 300
SHARED = ("-shared", "-fPIC")

_build_lock = threading.Lock()


def load_or_warn(
    source: str, flags: tuple[str, ...], stem: str, log: logging.Logger, purpose: str, fallback: str
) -> ctypes.CDLL | None:
    """The library built from ``source``, or ``None`` after one warning on ``log``: ``"<purpose>: no native
    kernel (<why>); using <fallback>"``."""
    try:
        return load(source, flags, stem)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("%s: no native kernel (%s); using %s", purpose, one_line(error), fallback)
        return None


def load(source: str, flags: tuple[str, ...], stem: str) -> ctypes.CDLL:
    """The library built from ``source`` with ``flags``: from the cache folder, else compiled there as
    ``<stem>-<hash>.so``. Raises ``OSError`` or ``subprocess.SubprocessError`` when it cannot be built."""
    compiler = os.environ.get("CXX") or "c++"
    executable = shutil.which(compiler)
    if executable is None:
        raise FileNotFoundError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    key = hashlib.sha256("\0".join((source, *flags, executable, _cpu_identity())).encode()).hexdigest()[:24]
    folder = cache_folder()
    library = folder / f"{stem}-{key}.so"
    with _build_lock:
        if not library.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                (Path(scratch) / f"{stem}.cpp").write_text(source)
                built = Path(scratch) / f"{stem}.so"
                subprocess.run(
                    [executable, *flags, *SHARED, f"{stem}.cpp", "-o", built.name],
                    cwd=scratch,
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=COMPILE_TIMEOUT_S,
                )
                os.replace(built, library)
    return ctypes.CDLL(str(library))


def cache_folder() -> Path:
    """Where built kernels are kept: ``$FEDMTL_KERNEL_CACHE``, else the user's cache folder."""
    explicit = os.environ.get("FEDMTL_KERNEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedmtl" / "kernels"


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str:
    """The machine and its CPU's feature flags: ``-march=native`` code runs only where they match."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


def one_line(error: BaseException) -> str:
    """A build error in one line: the compiler's first line of stderr, else its exit status, else the
    error's message or type."""
    if isinstance(error, subprocess.CalledProcessError):
        lines = (error.stderr or "").strip().splitlines()
        return f"the build failed: {lines[0] if lines else f'exit status {error.returncode}'}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
