"""Writing files so that a failure never leaves a half-written or emptied output behind.

Every file ferkit writes goes to a temporary file in the target folder first
and is renamed into place only once it is complete: a crash, a full disk or a
bad input leaves any earlier file of that name byte-identical.
"""

from __future__ import annotations

import json
import os
import stat
import sys
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


def read_bytes(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, after :func:`require_regular_file` and a size check: the one way ferkit reads a file.

    A FIFO or device is refused unopened (it could block or never end), and a
    file over ``max_bytes`` is refused unread, with a message naming it.
    """
    path = require_regular_file(path, what)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise OSError(f"{path}: {size / 2**20:.1f} MiB, more than a {what} can be "
                      f"({max_bytes / 2**20:.1f} MiB); not read")
    return path.read_bytes()


def read_text(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> str:
    """:func:`read_bytes` decoded as UTF-8 (UnicodeDecodeError names the position)."""
    return read_bytes(path, what, max_bytes).decode("utf-8")


@contextmanager
def stderr_descriptor_to(fd: int) -> Iterator[bool]:
    """Point the process's file descriptor 2 at ``fd`` until the block ends; yields whether it could.

    For messages that C libraries (TensorFlow's start-up, libjpeg) write to
    descriptor 2 directly, past ``sys.stderr``. Yields False, changing
    nothing, where the process has no usable descriptor 2 (some embedded
    interpreters).
    """
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


class OutputLedger:
    """The files ferkit has written into an output folder, so that later runs replace those and never the user's.

    A run may write a path that does not exist yet, or one the ledger lists
    (an earlier run's output); any other existing file is refused unless
    ``overwrite``. The ledger is a hidden file in the folder
    (``.ferkit-outputs``), one JSON-quoted relative path a line, appended as
    each file is written, so an interrupted run still knows its own files.
    """

    NAME = ".ferkit-outputs"

    def __init__(self, folder: str | os.PathLike, overwrite: bool = False):
        self.folder, self.overwrite = Path(folder), overwrite
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"{self.folder}: is a file; the output must be a folder (give another --out)")
        self.path = self.folder / self.NAME
        self.written: set[str] = set()
        if self.path.exists():
            for line in read_text(self.path, "output ledger", 256 * 2**20).splitlines():
                try:
                    self.written.add(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a crash: that file is treated as the user's

    def _key(self, path: Path) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.folder))

    def wrote(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is a file an earlier run wrote here."""
        return self._key(Path(path)) in self.written

    def claim(self, path: str | os.PathLike) -> Path:
        """``path``, checked as a place to write: new, or ferkit's own, or ``overwrite`` given."""
        path = check_output_path(path)
        if (path.exists() or path.is_symlink()) and not (self.overwrite or self.wrote(path)):
            raise OutputError(f"{path}: already exists and was not written by ferkit; left as it is. Move it, "
                              "choose another --out, or pass --overwrite to replace it")
        return path

    def record(self, path: str | os.PathLike) -> Path:
        """Note ``path`` (just written) as ferkit's own; returns it."""
        key = self._key(Path(path))
        if key not in self.written:
            self.written.add(key)
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as ledger:
                ledger.write(json.dumps(key) + "\n")
        return Path(path)
