"""The zygote a local sweep forks its cells from: each cell is still its own process, with its own
log, exit status, environment and parent-death signal (`tlbench.sweep.zygote`).

Most tests use a zygote that preloads nothing (it starts in a blink) and cells given as `-c` code;
one checks the real preload list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def zygote() -> Iterator[Any]:
    from tlbench.sweep.zygote import Zygote

    zyg = Zygote(preload=())
    yield zyg
    zyg.close()


def _cell(zygote: Any, log: Path, code: str, **env: str) -> Any:
    proc = zygote.spawn([sys.executable, "-c", code], log, dict(os.environ, **env))
    assert proc is not None, "the zygote died"
    return proc


def _wait_for(what: Any, timeout: float = 20.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := what():
            return value
        time.sleep(0.05)
    raise AssertionError(f"still waiting after {timeout:.0f} s")


def test_each_cell_is_its_own_process_with_its_log_exit_status_and_environment(
    zygote: Any, tmp_path: Path
) -> None:
    from tlbench._sweepdir import CellState
    from tlbench.sweep.state import end_state

    os.kill(zygote.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the zygote too: ignored
    crash = _cell(zygote, tmp_path / "crash.log", "import os; print('last words', flush=True); os._exit(7)")
    error = _cell(zygote, tmp_path / "error.log", "raise ValueError('boom')")
    env = _cell(
        zygote,
        tmp_path / "env.log",
        "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES'], os.getcwd(), repr(sys.stdin.read()))",
        CUDA_VISIBLE_DEVICES="1",
    )
    killed = _cell(zygote, tmp_path / "killed.log", "import time; time.sleep(60)")
    killed.kill()

    assert crash.wait(timeout=30) == 7 and (tmp_path / "crash.log").read_text() == "last words\n"
    assert error.wait(timeout=30) == 1
    assert (tmp_path / "error.log").read_text().startswith("Traceback (most recent call last):")
    assert (tmp_path / "error.log").read_text().endswith("ValueError: boom\n")
    assert env.wait(timeout=30) == 0 and (tmp_path / "env.log").read_text() == f"1 {os.getcwd()} ''\n"
    assert killed.wait(timeout=30) == -signal.SIGKILL
    pids = {p.pid for p in (crash, error, env, killed)}
    assert len(pids) == 4 and not pids & {os.getpid(), zygote.proc.pid}
    assert zygote.alive and zygote.proc.poll() is None  # no cell's end took the zygote down

    state = CellState("running")  # what the sweep records for the killed cell
    end_state(state, killed.wait(), 1.0, False, tmp_path / "killed.log")
    assert state.status == "failed" and state.error == "killed by signal 9 (SIGKILL)"


def test_a_killed_sweep_takes_its_zygote_and_cells_down(tmp_path: Path) -> None:
    """`kill -9` of the sweep: the zygote gets SIGTERM and dies, so each cell gets SIGTERM."""
    from tlbench.sweep.zygote import _running

    cell = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), sys.exit(130)))\n"
        "print('training', flush=True)\n"
        "time.sleep(60)\n"
    )
    sweep = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from tlbench.sweep.zygote import Zygote\n"
        "zyg = Zygote(preload=())\n"
        f"proc = zyg.spawn([sys.executable, '-c', {cell!r}], Path(sys.argv[1]), dict(os.environ))\n"
        "print(zyg.proc.pid, proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "cell.log"
    proc = subprocess.Popen([sys.executable, "-c", sweep, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        zygote_pid, cell_pid = map(int, proc.stdout.readline().split())
        _wait_for(lambda: log.is_file() and "training" in log.read_text())
    finally:
        proc.kill()
        proc.wait()
    _wait_for(lambda: not _running(cell_pid) and not _running(zygote_pid))
    assert log.read_text() == "training\ngot SIGTERM\n"


def test_the_preload_imports_everything_and_starts_no_thread_and_no_cuda() -> None:
    """Forking is safe only while the zygote has no thread of torch's and no CUDA state."""
    code = (
        "import os, sys\n"
        "import numpy\n"  # OpenBLAS's own threads start here, in any process (and survive a fork)
        "threads = lambda: len(os.listdir('/proc/self/task'))\n"
        "before = threads()\n"
        "import torch\n"
        "asked, count = [], torch._C._cuda_getDeviceCount\n"  # what is_available() and CUDA init call
        "torch._C._cuda_getDeviceCount = lambda: asked.append(1) or count()\n"
        "from tlbench.sweep.zygote import PRELOAD, _import\n"
        "_import(PRELOAD)\n"
        "missing = [m for m in PRELOAD if m not in sys.modules]\n"
        "print(before, threads(), torch.cuda.is_initialized() or bool(asked), missing)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    before, after, cuda, missing = res.stdout.split(maxsplit=3)
    assert after == before and cuda == "False" and missing.strip() == "[]", res.stdout
