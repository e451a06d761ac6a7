"""Atomic file and folder writes: a later step never reads a half-written file or folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tlbench._util import first_line
from tlbench.errors import OutputError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one `os.replace`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write to {path.parent}: {exc.strerror or exc}",
            "choose a writable folder (for example with --out)",
        ) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:  # a full disk (ENOSPC), a quota, a vanished folder: never a traceback
        tmp_path.unlink(missing_ok=True)
        raise write_error(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_error(path: Path, exc: BaseException) -> OutputError:
    """The one-line error for a failed write: what, where, why, and the free space left there.

    torch's writer reports a full disk as a RuntimeError ("unexpected pos ..."); with under 1 MiB
    free, the error says what that means.
    """
    why = (exc.strerror if isinstance(exc, OSError) else None) or first_line(exc, 120)
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < 2**20 and not isinstance(exc, OSError):
        why = f"No space left on device; {why}"
    room = f"; {free / 2**20:,.1f} MiB free there" if free is not None else ""
    return OutputError(
        f"cannot write {path} ({why}{room})",
        "free some space or choose another folder (for example with --out), then run again",
    )


class FolderLock:
    """An exclusive, process-lifetime claim on a folder: `flock` on `<folder>/.tlbench.lock`.

    The kernel drops the lock when the holding process ends, however it ends (`kill -9` included),
    so a lock never outlives its process and needs no cleaning up. The holder's pid is written in
    the file, for the message another process gets.

    Args:
        folder: The folder to claim (created if needed).
        what: Names the folder in messages ("run directory", "sweep folder").
    """

    NAME = ".tlbench.lock"

    def __init__(self, folder: str | os.PathLike[str], what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.NAME

    def acquire(self) -> FolderLock:
        """Claim the folder, or raise OutputError (exit 6) naming the live process that holds it."""
        import fcntl

        if self._fd is not None:
            return self
        check_writable(self.folder)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise OutputError(
                f"the {self.what} {self.folder} is in use by another tlbench process"
                + (f" (pid {pid})" if pid else ""),
                "wait for it to end, or choose another folder",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def holder(self) -> int | None:
        """The pid of a live process holding the folder (0 if unknown), or None when it is free."""
        import fcntl

        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        finally:
            os.close(fd)  # also drops the probe's own lock, if it got one
        return None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


TEMP_DIR_PREFIX = ".tmp-"  # a folder being built: `.tmp-<final name>-<pid>`, beside the final one


@contextmanager
def atomic_dir(
    final: str | os.PathLike[str],
    *,
    complete: str,
    remedy: str = "choose a writable folder",
    replace_incomplete: bool = False,
) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it is renamed to `final`.

    The folder is `.tmp-<final name>-<pid>`; it is removed on any exception, Ctrl-C included (and
    SIGTERM where a handler turns it into an exception). A `final` holding the file `complete` when
    the rename fails was finished by another process first: theirs is kept, ours dropped. An empty
    `final` is replaced; one that holds anything else is an OSError, unless `replace_incomplete`
    allows deleting it.

    Args:
        final: The folder to create.
        complete: The file, written last, whose presence makes a folder complete.
        remedy: What to tell the user when the temporary folder cannot be created.
        replace_incomplete: Delete an existing `final` without `complete` and put ours there.

    Raises:
        OutputError: The temporary folder cannot be created.
    """
    final = Path(final)
    tmp = final.parent / f"{TEMP_DIR_PREFIX}{final.name}-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise OutputError(f"cannot write to {final.parent} ({exc.strerror or exc})", remedy) from exc
    try:
        yield tmp
        try:
            os.replace(tmp, final)  # POSIX: replaces an empty folder too
        except OSError:
            if (final / complete).is_file():
                return  # another process finished the same folder first; theirs is as good as ours
            if not replace_incomplete:
                raise
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_dead_temp_dirs(parent: str | os.PathLike[str]) -> None:
    """Remove the `atomic_dir` folders in `parent` whose process is gone (killed before cleaning up)."""
    for folder in Path(parent).glob(f"{TEMP_DIR_PREFIX}*-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)`, then move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create `folder` if needed and prove it is writable, or raise OutputError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tlbench-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(
            f"output folder {folder} is not writable ({exc.strerror or exc})",
            "choose a writable folder with --out",
        ) from exc
    return folder
