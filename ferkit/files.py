"""Writing files so that a failure never leaves a half-written or emptied output behind.

Every file ferkit writes goes to a temporary file in the target folder first
and is renamed into place only once it is complete: a crash, a full disk or a
bad input leaves any earlier file of that name byte-identical.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputError(OSError):
    """An output cannot be written where asked; the message says which and why."""


def check_output_path(path: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """``path`` as a Path after checking that it can become a file, before anything is read or written.

    Refused: an existing folder, a path under an existing file, and a path
    that is one of ``inputs`` (writing would destroy the data being read).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name inside it, e.g. {path / 'out'}{path.suffix}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a folder; choose another output path")
            break
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputError(f"{path}: is also the input; write to a new file so that the input stays intact")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that becomes ``path`` when the block succeeds.

    The folder is created if needed. On any exception the temporary file is
    removed and ``path`` is left as it was.
    """
    path = check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as error:
        raise OutputError(f"{path}: cannot write here ({error.strerror or error}); choose another output folder") from error
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        if path.exists():  # keep the permissions of the file being replaced
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise OutputError(f"{path}: writing failed ({error.strerror or error}); nothing was changed") from error
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def require_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file (or a link to one); FIFOs, devices and sockets are refused unopened.

    Opening a FIFO blocks until something writes to it, so it is checked with
    ``stat`` first.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(f"{path}: broken symbolic link (its target does not exist)") from None
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as error:  # e.g. a symlink loop
        raise FileNotFoundError(f"{path}: cannot be read ({error.strerror or error})") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise OSError(f"{path}: is {kind}, not a regular file; refusing to open it")
    return path


@contextmanager
def stderr_descriptor_to(fd: int) -> Iterator[bool]:
    """Point the process's file descriptor 2 at ``fd`` until the block ends; yields whether it could.

    For messages that C libraries (TensorFlow's start-up, libjpeg) write to
    descriptor 2 directly, past ``sys.stderr``. Yields False, changing
    nothing, where the process has no usable descriptor 2 (some embedded
    interpreters).
    """
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield False
        return
    os.dup2(fd, 2)
    try:
        yield True
    finally:
        os.dup2(saved, 2)
        os.close(saved)
