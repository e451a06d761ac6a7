"""Cheap sweep cells: one process imports torch, timm and tlbench once; each cell is a fork of it.

A fresh interpreter spends about 6 s of this 2-core CPU importing torch and timm before a cell's
first batch. So a local sweep starts one *zygote*, `python -m tlbench.sweep.zygote`, that imports
them (`PRELOAD`) and then only waits; for each cell the sweep sends it the cell's command line, and
a fork of the zygote becomes what `python -m tlbench.train.worker cells/<id>.json` would have been.
Each cell keeps what its own interpreter gave it:

- its own process: a crash, an `os._exit` or an out-of-memory kill ends that cell alone;
- stdin from /dev/null, stdout and stderr appended to its log (`cells/<id>.log`);
- the sweep's environment and working folder as they are when the cell starts, with the slot's
  `CUDA_VISIBLE_DEVICES`, set before anything touches CUDA: the zygote never initialises CUDA nor
  runs a torch operation, so no CUDA state and no OpenMP thread pool is split by the fork;
- SIGTERM when the sweep dies, however it dies: the zygote gets it (parent-death signal) and dies,
  and each cell gets SIGTERM when the zygote dies; it stops at its next batch with a checkpoint;
- Ctrl-C: the cells share the sweep's process group and get it; the zygote ignores it, so it keeps
  reporting exit statuses while the cells stop after their batch;
- its exit status, as `subprocess.Popen.returncode` gives it (negative: killed by that signal): the
  zygote reaps each cell and reports it; the sweep reads it through `ForkedCell`, a small stand-in
  for `Popen`;
- interpreter exit: non-daemon threads are joined and `atexit` handlers run; module teardown, which
  ends with the process anyway, is skipped (`tlbench._util.exit_now`, as the worker itself does).

Libraries that read the environment once, when they load (OpenMP's `OMP_*`, `HF_HUB_OFFLINE`), read
it in the zygote: the sweep's environment when the sweep started, the same as every cell's but for
`CUDA_VISIBLE_DEVICES`. Every cell runs the code the zygote imported when the sweep started (code
changed on disk during the sweep reaches cells only through modules it has not imported), and
records that code's commit in its env.json.

Protocol, one JSON object per line: the sweep writes `{"argv", "log", "env", "cwd"}` to the zygote's
stdin; the zygote answers each request in order with `{"started": pid}` and reports each cell's end
with `{"pid": pid, "code": code}` on its stdout. A zygote started by the sweep exits when its stdin
closes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from tlbench._util import exit_now

PRELOAD = (
    "torch",
    "torch.utils.serialization",
    "timm",
    "safetensors.torch",
    "matplotlib.pyplot",
    "matplotlib.backends.backend_agg",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
    "rich.console",
    "rich.text",
    "tlbench._timeline",
    "tlbench.errors",
    "tlbench.rundir",
    "tlbench.train.trainer",
    "tlbench.train.baseline",
    "tlbench.train.artifacts",
    "tlbench.train.env",
    "tlbench.train.inputs",
    "tlbench.train.features",
    "tlbench.train.trackers",
    "tlbench.models",
    "tlbench.data.dataset",
    "tlbench.data.cache",
    "tlbench.data.augment",
    "tlbench.data.synth",
)
"""What every cell imports (a run or a baseline), imported once by the zygote. Importing none of
them starts a thread of torch's or touches CUDA (tests/test_sweep_zygote.py checks). Not the worker
module itself: `python -m` runs a module that is not imported yet."""

LOST = 255
"""The exit status of a cell whose zygote died before it (the cell got SIGTERM); as
`multiprocessing`'s forkserver reports it."""

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def die_with_parent(parent: int, ignore: Sequence[signal.Signals] = ()) -> None:
    """Have this process sent SIGTERM when its parent `parent` ends, and ignore `ignore`.

    The kernel sends it however the parent ends (`kill -9` included); a no-op where prctl is
    missing (not Linux). If the parent has already gone, SIGTERM comes at once. An ignored signal
    stays ignored across exec, for the process and its children.
    """
    for signum in ignore:
        signal.signal(signum, signal.SIG_IGN)
    prctl = libc_prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the call: nobody is left to signal
        os.kill(os.getpid(), signal.SIGTERM)


@functools.cache
def libc_prctl() -> Any:
    """libc's prctl, or None where there is none. Looked up once, before any fork."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# -- the sweep's side ------------------------------------------------------------------------------


class Zygote:
    """The sweep's handle on its zygote: start it, fork cells from it, learn how they ended.

    Args:
        preload: The modules the zygote imports before its first fork.
        stderr: Where the zygote's own output goes (its cells write to their logs); default nowhere.
    """

    def __init__(self, preload: Sequence[str] = PRELOAD, stderr: Any = subprocess.DEVNULL) -> None:
        libc_prctl()  # before the fork below
        sweep = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlbench.sweep.zygote", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=lambda: die_with_parent(sweep, ignore=(signal.SIGINT,)),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both PIPE above
        self._stdin: IO[bytes] = self.proc.stdin
        self._stdout: IO[bytes] = self.proc.stdout
        self.codes: dict[int, int] = {}
        self.alive = True
        self._pending: list[dict[str, Any]] = []
        self._buffer = b""

    @staticmethod
    def can_run(argv: Sequence[str]) -> bool:
        """Whether the zygote can stand in for `argv`: `python -m MODULE ...` or `python -c CODE ...`
        with this interpreter."""
        return len(argv) >= 3 and argv[0] == sys.executable and argv[1] in ("-m", "-c")

    def spawn(self, argv: Sequence[str], log: Path, env: dict[str, str]) -> ForkedCell | None:
        """Fork a cell that runs `argv` with `env`, its output appended to `log`.

        Waits for the zygote to finish its imports the first time. Returns None when the zygote
        has died (the caller starts the cell as its own interpreter instead).
        """
        request = {"argv": list(argv), "log": str(log), "env": env, "cwd": os.getcwd()}
        try:
            self._stdin.write(json.dumps(request).encode() + b"\n")
            self._stdin.flush()
        except (BrokenPipeError, ValueError):
            self.alive = False
            return None
        while self.alive and not self._pending:
            self._read(block=True)
        if not self._pending:
            return None
        return ForkedCell(self, self._pending.pop(0)["started"], list(argv))

    def returncode(self, pid: int) -> int | None:
        """The exit status of cell `pid` once it has ended, else None (never blocks)."""
        while pid not in self.codes and self.alive and self._read(block=False):
            pass
        if pid not in self.codes and not self.alive and not _running(pid):
            self.codes[pid] = LOST
        return self.codes.get(pid)

    def close(self) -> None:
        """End the zygote, even in the middle of its imports, and reap it; cells still running get
        SIGTERM (their parent-death signal)."""
        for pipe in (self._stdin, self._stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        self.proc.terminate()
        self.proc.wait()
        self.alive = False

    def _read(self, block: bool) -> bool:
        """Read what the zygote has written (waiting for something when `block`); False if nothing."""
        fd = self._stdout.fileno()
        if not block and not select.select([fd], [], [], 0)[0]:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:  # the zygote has ended
            self.alive = False
            return False
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "code" in message:
                self.codes[message["pid"]] = message["code"]
            else:
                self._pending.append(message)
        return True


class ForkedCell:
    """A cell forked by the zygote, with the part of `subprocess.Popen` the sweep uses."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        self.zygote, self.pid, self.args = zygote, pid, args

    def poll(self) -> int | None:
        return self.zygote.returncode(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, once the cell has ended.

        Raises:
            subprocess.TimeoutExpired: It still runs after `timeout` seconds.
        """
        end = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if timeout is not None and end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


# -- the zygote's side ------------------------------------------------------------------------------


def serve(preload: Sequence[str]) -> None:
    """The zygote: import `preload`, then fork a cell per request until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the sweep and its cells
    _import(preload)
    _remember()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)  # SIGCHLD wakes the select below
    buffer = b""
    while True:
        ready = select.select([0, wake_r], [], [])[0]
        if wake_r in ready:
            _drain(wake_r)
            _reap()
        if 0 in ready:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                pid = _fork(json.loads(line), close=(wake_r, wake_w))
                _send({"started": pid})


def _import(modules: Sequence[str]) -> None:
    """Import `modules`, skipping any that fail (a cell importing one again shows its error)."""
    for name in modules:
        try:
            if name == "matplotlib.pyplot":
                import matplotlib

                matplotlib.use("Agg")  # what tlbench's plots use; no GUI toolkit is loaded
            __import__(name)
        except Exception:  # the cell's own import of it fails the same way, in the cell's log
            pass


def _remember() -> None:
    """Work every cell would repeat with the same result, done once here: the commit of the code
    the cells run (the zygote's code: `tlbench.train.env.git_commit` caches it)."""
    env = sys.modules.get("tlbench.train.env")
    if env is not None:
        env.git_commit()


def _drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _send(message: dict[str, Any]) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def _reap() -> None:
    """Report every cell that has ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _fork(request: dict[str, Any], close: Sequence[int]) -> int:
    """Fork a cell for `request`; return its pid (in the zygote: the child never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    zygote = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        _become_cell(request, zygote, close)
    except BaseException:  # a child of the zygote must never return into the zygote's loop
        traceback.print_exc()
    finally:
        os._exit(1)


def _become_cell(request: dict[str, Any], zygote: int, close: Sequence[int]) -> NoReturn:
    """In the forked child: become the process `request` describes, run it, and exit."""
    signal.set_wakeup_fd(-1)
    for fd in close:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    die_with_parent(zygote)
    _redirect(request["log"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])  # before anything touches CUDA: CUDA_VISIBLE_DEVICES
    if "numpy" in sys.modules:  # a fresh interpreter's global numpy stream, not the zygote's copy
        sys.modules["numpy"].random.seed()
    exit_now(_status(_run(request["argv"][1:])))


def _redirect(log: str) -> None:
    """stdin from /dev/null, stdout and stderr appended to `log` (the zygote's pipes are replaced)."""
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def _run(args: list[str]) -> object:
    """Run `-m MODULE ARGS` or `-c CODE ARGS` as the interpreter would; the SystemExit code."""
    import runpy

    flag, target, *rest = args
    try:
        if flag == "-m":
            sys.argv = [target, *rest]  # runpy puts the module's path first
            sys.modules.pop(target, None)  # as under `python -m`: only __main__ holds its code
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *rest]
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        return exc.code
    except KeyboardInterrupt as exc:  # as the interpreter: the traceback, then death by SIGINT
        _print_traceback(exc)
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 1
    except BaseException as exc:  # as the interpreter: print it, exit 1
        _print_traceback(exc)
        return 1
    return 0


def _print_traceback(exc: BaseException) -> None:
    """The traceback the interpreter would print: from the cell's code on, without this module's frame."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    traceback.print_exception(type(exc), exc, tb)


def _status(code: object) -> int:
    """The exit status of a `SystemExit` code, as the interpreter makes it (a message: printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1:])
