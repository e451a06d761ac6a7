"""A Slurm sweep under a flaky cluster: each fault made for real by fake Slurm commands on PATH.

`sbatch` that answers without a job id or hangs (and Ctrl-C while it hangs), no `sacct`, a counting
`sacct` (one call per poll for the whole array, polls further and further apart), a requeued cell
whose checkpoint is damaged, and a tuned sweep whose tasks must find the study's storage.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

COMMON = ["--data", "synthetic:4x24@32", "--epochs", "1", "--no-pretrained", "--device", "cpu"]
COMMON += ["--image-size", "32", "--amp", "off", "--no-baseline"]
SLURM = ["--executor", "slurm", "--slurm-time", "1h", "--gpus-per-cell", "0"]
CELL = "test_resnet-keras-vgg19-fall-s0"

SBATCH_OK = 'n=$(cat "$D/next" 2>/dev/null || echo 1234); echo $((n + 1)) > "$D/next"\n'
SBATCH_OK += 'cp "$1" "$D/sbatch-$n.sh"; echo "Submitted batch job $n"\n'
SACCT = 'echo "$@" >> "$D/sacct-calls"; cat "$D/sacct.txt" 2>/dev/null || echo "JobID|State|NodeList"\n'


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """`slurm(sbatch=..., sacct=...)`: Slurm's commands as these shell bodies on PATH (`$D`: their
    folder); a command given as None is not there at all."""

    def make(sbatch: str | None = SBATCH_OK, sacct: str | None = SACCT) -> Path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name, body in (("sbatch", sbatch), ("srun", "exit 0\n"), ("sacct", sacct)):
            if body is not None:
                path = bin_dir / name
                path.write_text(f"#!/bin/sh\nD={bin_dir}\n{body}")
                path.chmod(0o755)
        # PATH keeps the interpreter's folder (submitit runs `sh`), but no real Slurm
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
        return bin_dir

    submitit.SlurmJob.watcher.clear()
    return make


def _sweep(folder: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--backbones",
        "test_resnet",
        "--freeze",
        "all",
        "--out",
        str(folder),
        *SLURM,
        *COMMON,
        *extra,
    ]


def _state(folder: Path) -> dict[str, dict]:
    return json.loads((folder / "state.json").read_text())


def test_sbatch_that_answers_without_a_job_id_is_one_line(cli, tmp_path: Path, slurm) -> None:
    bin_dir = slurm(sbatch='echo "Submitted"\n')  # exit 0, no id
    code, _, err = cli(*_sweep(tmp_path / "s"))
    assert code == 6, err
    assert "tlbench: error: sbatch answered without a job id (Submitted)" in err
    assert "squeue --me --name tlbench-s" in err and "Traceback" not in err
    assert not list(bin_dir.glob("sbatch-*.sh"))


def test_sbatch_that_hangs_times_out(cli, tmp_path: Path, slurm, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.sweep import slurm as slurm_module

    monkeypatch.setattr(slurm_module, "SBATCH_TIMEOUT_S", 1.0)
    slurm(sbatch="exec sleep 60\n")
    start = time.monotonic()
    code, _, err = cli(*_sweep(tmp_path / "s"))
    assert time.monotonic() - start < 30
    assert code == 6, err
    assert "tlbench: error: sbatch did not answer within 1 s" in err and "may have been submitted" in err
    assert "Traceback" not in err


def test_ctrl_c_while_sbatch_hangs_says_interrupted(tmp_path: Path, slurm) -> None:
    bin_dir = slurm(sbatch='touch "$D/sbatch-started"; exec sleep 60\n')
    cmd = [sys.executable, "-m", "tlbench", *_sweep(tmp_path / "s")]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (bin_dir / "sbatch-started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.startswith("tlbench: error:")]
    assert len(lines) == 1 and "interrupted while sbatch submitted" in lines[0], err
    assert "Traceback" not in err


def test_wait_without_sacct_submits_nothing_and_says_so_once(cli, tmp_path: Path, slurm) -> None:
    bin_dir = slurm(sacct=None)
    folder = tmp_path / "s"
    code, _, err = cli(*_sweep(folder, "--wait"))
    assert code == 2, err
    assert err.count("tlbench: error: --wait follows the jobs with Slurm's sacct, which is not on PATH") == 1
    assert "Bypassing" not in err and not list(bin_dir.glob("sbatch-*.sh"))

    code, _, err = cli(*_sweep(folder, "--seeds", "0,1"))  # submitted without --wait
    assert code == 0, err
    code, _, err = cli(*_sweep(folder, "--seeds", "0,1", "--status"))
    assert code == 0, err
    assert err.count("sacct is not on PATH") == 1 and "Bypassing" not in err
    assert "Traceback" not in err


def test_wait_asks_sacct_once_per_poll_for_the_whole_array(
    cli, tmp_path: Path, slurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlbench.sweep import slurm as slurm_module

    monkeypatch.setattr(slurm_module, "SACCT_POLL_S", (0.05, 2.0, 0.2))
    # running at the first two polls, then failed (without a result: its log says why)
    sacct = 'echo "$@" >> "$D/sacct-calls"; n=$(wc -l < "$D/sacct-calls"); echo "JobID|State|NodeList"\n'
    sacct += 'for i in 0 1 2 3 4 5 6 7; do if [ "$n" -le 2 ]; then s=RUNNING; else s=FAILED; fi\n'
    sacct += 'echo "1234_$i|$s|n1"; done\n'
    bin_dir = slurm(sacct=sacct)
    code, _, err = cli(*_sweep(tmp_path / "s", "--seeds", "0,1,2,3,4,5,6,7", "--wait"))
    assert code == 1 and "8 failed" in err, err
    calls = (bin_dir / "sacct-calls").read_text().splitlines()
    assert len(calls) == 3, calls  # three polls of 8 cells: one call each
    assert all(call.endswith("-j 1234") for call in calls), calls


def test_polls_grow_further_apart_up_to_a_limit() -> None:
    from itertools import islice, pairwise

    from tlbench.sweep.slurm import SACCT_POLL_S, poll_intervals

    delays = list(islice(poll_intervals(), 20))
    assert delays[0] == SACCT_POLL_S[0] and delays[-1] == SACCT_POLL_S[2]
    assert all(b >= a for a, b in pairwise(delays)) and delays[3] > delays[0]
    assert max(delays) <= 300  # "at most every few minutes", never more often than the first


def test_a_cell_whose_checkpoint_is_damaged_says_how_to_start_over_and_is_not_resubmitted(
    cli, tmp_path: Path, slurm
) -> None:
    bin_dir = slurm()
    folder = tmp_path / "s"
    code, _, err = cli(*_sweep(folder))
    assert code == 0 and _state(folder)[CELL]["job_id"] == "1234", err
    run_dir = folder / "cells" / CELL
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")  # requeued once, then damaged
    (bin_dir / "sacct.txt").write_text("JobID|State|NodeList\n1234|FAILED|n1\n")
    (folder / "cells" / f"{CELL}.log").write_text(
        "--- job 1234 ---\ntlbench: error: cannot load x/checkpoint.pt (RuntimeError: bad zip. eof). "
        "the checkpoint is damaged: start a new run\n"
    )
    fix = f"the checkpoint is damaged: delete {run_dir} and run the sweep again to start this cell over"
    code, _, err = cli(*_sweep(folder, "--status"))
    assert fix in err.replace("\n", ""), err
    assert _state(folder)[CELL]["status"] == "failed"

    code, _, err = cli(*_sweep(folder))  # the same command again: it would only fail again
    assert code == 1 and fix in err.replace("\n", ""), err
    assert not (bin_dir / "sbatch-1235.sh").exists() and _state(folder)[CELL]["attempts"] == 1

    import shutil

    shutil.rmtree(run_dir)  # as the message says: the cell starts over
    code, _, err = cli(*_sweep(folder))
    assert code == 0 and (bin_dir / "sbatch-1235.sh").exists(), err
    assert _state(folder)[CELL]["status"] == "queued" and _state(folder)[CELL]["attempts"] == 2


def test_tuned_slurm_tasks_draw_their_trials_from_the_shared_study(cli, tmp_path: Path, slurm) -> None:
    """The trials run as Slurm tasks: each takes a queued trial from the study in the storage it was
    given, trains it and tells the study; the same command again resubmits a trial whose task ended
    without running it, and once every trial has ended submits the final runs with the best values."""
    optuna = pytest.importorskip("optuna")
    bin_dir = slurm()
    folder = tmp_path / "s"
    tune = ["--tune", "lr", "--trials", "2", "--tune-epochs", "1", "--select", "25%", "--seeds", "0,1"]
    storage = f"sqlite:///{(folder / 'tune.db').absolute()}"
    study_name = CELL.rsplit("-s", 1)[0]

    def submitted(kind: str, job: int) -> list:
        tasks = [
            pickle.loads(p.read_bytes()).function for p in (folder / "jobs").glob(f"{job}*_submitted.pkl")
        ]
        return [t for t in tasks if type(t).__name__ == kind]

    def sacct(*jobs: str) -> None:
        lines = ["JobID|State|NodeList", *(f"{j}|COMPLETED|n1" for j in jobs)]
        (bin_dir / "sacct.txt").write_text("\n".join(lines) + "\n")

    code, _, err = cli(*_sweep(folder, *tune))
    assert code == 0, err
    assert "tuning: 2 trial task(s) queued or running (job 1234)" in err.replace("\n", " "), err
    tasks = sorted(submitted("TrialJob", 1234), key=lambda t: t.task)
    assert len(tasks) == 2 and not submitted("CellJob", 1234)  # no final run before the trials
    assert {t.options.storage for t in tasks} == {storage} and [t.number for t in tasks] == [0, 1]  # one each
    assert {st["status"] for st in _state(folder).values()} == {"pending"}

    assert tasks[0]()["state"] == "COMPLETE"  # as on its node: one trial, told to the shared study
    code, _, err = cli(*_sweep(folder, *tune), "--status")  # read from the study, not tuning.json
    said = f"tuning {study_name}: 1 of 2 trial(s) ended, 0 running, 1 queued, best selection top-1 "
    assert code == 0 and said in err.replace("\n", " "), err
    sacct("1234_0", "1234_1")  # both tasks ended; the second never ran its trial
    code, _, err = cli(*_sweep(folder, *tune))
    assert code == 0 and "(job 1235)" in err, err
    (again,) = submitted("TrialJob", 1235)
    assert again()["state"] == "COMPLETE"

    sacct("1234_0", "1234_1", "1235")
    code, _, err = cli(*_sweep(folder, *tune))
    assert code == 0, err
    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2 and sorted(t.user_attrs["slot"] for t in done) == [0, 1]
    finals = submitted("CellJob", 1236)
    assert sorted(t.cell_id for t in finals) == [CELL, CELL.replace("s0", "s1")]
    config = json.loads((folder / "cells" / f"{CELL}.json").read_text())["config"]
    assert config["recipe"]["lr"] == pytest.approx(study.best_params["lr"])
    assert config["select"] == "none"  # refit: the selection images train the final runs
    record = json.loads((folder / "tuning.json").read_text())["studies"][study_name]
    assert record["counts"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 0}
