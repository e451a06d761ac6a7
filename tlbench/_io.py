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
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
