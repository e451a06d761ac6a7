"""`tlbench sweep --executor slurm`: the job array it submits, the states it reads back, requeueing.

No cluster here: Slurm's commands are small scripts on PATH (a fake `sbatch` records the script it is
given), and the end-to-end run uses submitit's local executor, which runs the very same jobs as local
processes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlbench.rundir import RunDir

submitit = pytest.importorskip("submitit")

COMMON = ["--data", "synthetic:4x24@32", "--epochs", "1", "--no-pretrained", "--device", "cpu"]
SLURM = [
    *("--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "4h"),
    *("--slurm-account", "acct", "--slurm-qos", "high", "--cpus-per-cell", "8", "--mem-per-cell", "32G"),
    *("--gpus-per-cell", "2", "--array-parallelism", "2"),
]
CELLS = [f"test_resnet-keras-vgg19-fall-s{s}" for s in range(3)]


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """sbatch, srun and sacct on PATH: sbatch keeps each script (sbatch-<id>.sh) and numbers jobs
    from 1234; sacct prints sacct.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": 'n=$(cat "$D/next" 2>/dev/null || echo 1234); echo $((n + 1)) > "$D/next"\n'
        'cp "$1" "$D/sbatch-$n.sh"; echo "Submitted batch job $n"\n',
        "srun": "exit 0\n",
        "sacct": 'cat "$D/sacct.txt" 2>/dev/null || echo "JobID|State|NodeList"\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nD={bin_dir}\n{body}")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    submitit.SlurmJob.watcher.clear()  # sacct's answers are cached per process
    yield bin_dir
    submitit.SlurmJob.watcher.clear()


def _state(folder: Path) -> dict[str, dict]:
    return json.loads((folder / "state.json").read_text())


def test_slurm_submits_one_array_with_the_resources_and_reads_states_back(
    cli, tmp_path: Path, fake_slurm: Path
) -> None:
    folder = tmp_path / "s"
    sweep = ["sweep", "--backbones", "test_resnet", "--freeze", "all", "--seeds", "0,1,2", "--out", folder]
    code, _, err = cli(*sweep, *SLURM, *COMMON)
    assert code == 0, err
    assert "3 queued" in err and "--status" in err
    script = (fake_slurm / "sbatch-1234.sh").read_text().splitlines()
    for line in (
        "#SBATCH --array=0-2%2",  # one task per cell, two at a time
        "#SBATCH --partition=gpu",
        "#SBATCH --time=240",
        "#SBATCH --account=acct",
        "#SBATCH --qos=high",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32G",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --signal=USR2@120",  # the cell stops and is requeued 2 min before the limit
        "#SBATCH --requeue",
    ):
        assert line in script, line
    states = _state(folder)
    assert [states[c]["job_id"] for c in CELLS] == ["1234_0", "1234_1", "1234_2"]
    assert {states[c]["status"] for c in CELLS} == {"queued"}
    assert json.loads((folder / "cells" / f"{CELLS[0]}.json").read_text())["kind"] == "run"

    # --status: each cell's state from sacct and from its log
    (fake_slurm / "sacct.txt").write_text(
        "JobID|State|NodeList\n1234_0|RUNNING|n1\n1234_1|PENDING|None assigned\n1234_2|FAILED|n2\n"
    )
    (folder / "cells" / f"{CELLS[2]}.log").write_text("--- start ---\ntlbench: error: out of disk\n")
    code, _, err = cli(*sweep, *SLURM, *COMMON, "--status")
    assert code == 0, err
    for cell, line in zip(CELLS, ("running: job 1234_0 RUNNING", "queued: job 1234_1 PENDING"), strict=False):
        assert f"sweep: {cell} {line}" in err
    assert f"sweep: {CELLS[2]} failed: job FAILED: out of disk" in err
    states = _state(folder)
    assert [states[c]["status"] for c in CELLS] == ["running", "queued", "failed"]
    code, _, err = cli("report", folder)  # no run finished yet; the failed cell is listed with why
    assert f"{CELLS[2]}: sweep cell failed: job FAILED: out of disk" in err

    # the same command again: the failed cell alone is submitted again (one job, no array)
    submitit.SlurmJob.watcher.clear()
    code, _, err = cli(*sweep, *SLURM, *COMMON)
    assert code == 0, err
    states = _state(folder)
    assert [states[c]["job_id"] for c in CELLS] == ["1234_0", "1234_1", "1235"]
    assert states[CELLS[2]]["status"] == "queued" and states[CELLS[2]]["attempts"] == 2
    assert "--array" not in (fake_slurm / "sbatch-1235.sh").read_text()


def test_slurm_options_are_checked_before_anything_is_submitted(cli, tmp_path: Path) -> None:
    sweep = ["sweep", "--backbones", "test_resnet", "--freeze", "all", "--out", tmp_path / "s", *COMMON]
    for args, expected in (
        (["--slurm-partition", "gpu"], "--slurm-partition is for --executor slurm"),
        (["--executor", "slurm"], "needs --slurm-time"),
        (["--executor", "slurm", "--slurm-time", "soon"], "--slurm-time 'soon' is not a time limit"),
        (["--executor", "slurm", "--slurm-time", "1h", "--mem-per-cell", "lots"], "--mem-per-cell 'lots'"),
        (["--executor", "slurm", "--slurm-time", "1h", "--gpus", "0"], "--gpus picks local GPUs"),
        (["--executor", "slurm", "--slurm-time", "1h"], "needs Slurm (sbatch, srun, sacct on PATH)"),
        (["--executor", "pbs"], "--executor 'pbs' is not one of local, slurm"),
        (
            ["--executor", "slurm", "--slurm-time", "1h", "--protocols", "knn"],
            f"once the jobs end, run tlbench eval test_resnet --protocols knn --data {COMMON[1]}",
        ),
    ):
        code, _, err = cli(*sweep, *args)
        assert code == 2 and expected in err, (args, err)


def test_slurm_time_limits() -> None:
    from tlbench.config.cluster import slurm_minutes

    assert [slurm_minutes(t) for t in ("240", "4h", "90m", "1d12h", "04:00:00", "1-00:00:30")] == [
        240,
        240,
        90,
        2160,
        240,
        1441,
    ]


def test_a_cell_of_several_gpus_runs_under_torchrun() -> None:
    from tlbench.sweep import worker_command
    from tlbench.sweep.cell_job import cell_command

    cell = Path("cells/c.json")
    worker = ["-m", "tlbench.train.worker", str(cell)]
    assert cell_command(cell, 1, 1, "7_0", "n1") == worker_command(cell)
    assert cell_command(cell, 4, 1, "7_0", "n1") == [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone"),
        *worker,
    ]
    two_nodes = cell_command(cell, 4, 2, "7_0", "n1")
    assert two_nodes[two_nodes.index("--nnodes") + 1] == "2" and two_nodes[-3:] == worker
    assert two_nodes[two_nodes.index("--rdzv-endpoint") + 1].startswith("n1:")


def test_at_the_time_limit_the_cell_stops_and_requeues_itself(tmp_path: Path) -> None:
    from submitit.helpers import DelayedSubmission

    from tlbench.sweep.cell_job import STALLED_TIMEOUTS, CellJob

    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "c.json").write_text(json.dumps({"kind": "run", "config": {"out": str(cells / "c")}}))
    job = CellJob(str(tmp_path), "c", gpus=1, nodes=1, time_min=240)
    job._proc = subprocess.Popen(["sleep", "60"])  # stands in for the worker
    again = job.checkpoint()
    assert job._proc.poll() is not None  # the worker was stopped
    assert isinstance(again, DelayedSubmission) and isinstance(again.function, CellJob)
    assert (again.function.cell_id, again.function.stalled) == ("c", 0)  # preempted early: no stall

    # whole time slots without a finished epoch: requeued until STALLED_TIMEOUTS, then not
    job = CellJob(str(tmp_path), "c", gpus=1, nodes=1, time_min=240)
    for stalled in range(1, STALLED_TIMEOUTS + 1):
        job._started = time.time() - 240 * 60
        again = job.checkpoint()
        if stalled < STALLED_TIMEOUTS:
            assert again is not None and again.function.stalled == stalled
            job = again.function
    assert again is None
    assert "tlbench: error: no epoch finished in 2 time slots" in (cells / "c.log").read_text()


@pytest.mark.slow
def test_a_sweep_runs_end_to_end_as_submitit_jobs(cli, tmp_path: Path) -> None:
    """Through the Python API: `submitit-local` is not a CLI choice (it exists for this test)."""
    from tlbench.sweep import ClusterOptions, run_sweep

    folder = tmp_path / "s"
    options = {"data": "synthetic:4x24@32", "epochs": 1, "image_size": 32, "pretrained": False}
    options |= {"device": "cpu", "batch_size": 16}

    def sweep() -> dict:
        grid = (["test_resnet"], ["all"], ["keras-vgg19"], [0, 1])
        cluster = ClusterOptions(slurm_time="10m", gpus_per_cell=0)
        how = {"gpus": [], "baselines": False, "dry_run": False, "progress": False, "wait": True}
        _, states = run_sweep(*grid, options, out=folder, executor="submitit-local", cluster=cluster, **how)
        return states

    states = sweep()
    assert {st.status for st in states.values()} == {"finished"}, states
    assert {st.exit_code for st in states.values()} == {0}
    cells = sorted(states)
    assert "job " in (folder / "cells" / f"{cells[0]}.log").read_text().splitlines()[0]
    code, out, err = cli("report", folder, "--format", "csv")  # read as a local sweep is
    assert code == 0, err
    (row,) = csv.DictReader(io.StringIO(out))
    assert (row["backbone"], row["n"], row["seeds"]) == ("test_resnet", "2", "0,1") and "skipped" not in err

    code, _, err = cli(
        "sweep",
        "--backbones",
        "test_resnet",
        "--freeze",
        "all",
        "--seeds",
        "0,1",
        "--out",
        folder,
        "--no-baseline",
        *COMMON,
        "--status",
    )
    assert code == 0 and all(f"sweep: {cell} finished" in err for cell in cells), err

    pickles = sorted((folder / "jobs").glob("*_submitted.pkl"))
    assert sweep() == states  # the same sweep again: every cell finished, nothing submitted
    assert sorted((folder / "jobs").glob("*_submitted.pkl")) == pickles


def test_a_trial_task_takes_its_own_trial_and_at_its_time_limit_requeues_it(tmp_path: Path) -> None:
    """A task takes the queued trial it was bound to (never another task's); USR2 before the limit
    stops the trial's worker, and the requeued task resumes that trial (its slot, the epochs already
    reported); a trial that has ended is not rerun; whole time slots without an epoch end it."""
    optuna = pytest.importorskip("optuna")
    from submitit.helpers import DelayedSubmission

    from tlbench.config.tuning import TuneOptions
    from tlbench.sweep.cell_job import STALLED_TIMEOUTS
    from tlbench.sweep.grid import Cell
    from tlbench.sweep.trial_job import TrialJob, claim
    from tlbench.sweep.tune import _Study, _Trial

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'tune.db'}", direction="maximize")
    for slot in (3, 4):
        study.enqueue_trial({}, user_attrs={"slot": slot})
    st = _Study("k", Cell("k-s0", "run", "test_resnet", "keras-vgg19", "all", 0), study, {})
    claimed = claim(st, 1, resumed=False)  # the second queued trial, bound to this task
    assert claimed is not None and claimed[1:] == (4, 0)
    assert claim(st, 1, resumed=False) is None  # taken: no second task runs it
    trial = claimed[0]
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    trial.report(0.4, 1)

    job = TrialJob(str(tmp_path), st.cell, {}, {}, TuneOptions(tune="lr", trials=4), 1, task=1, time_min=240)
    worker = subprocess.Popen(["sleep", "60"])  # stands in for the trial's worker
    with (tmp_path / "t.log").open("a") as log:
        job._trial = _Trial(st, trial, 4, RunDir(tmp_path / "t"), worker, log, time.time())  # type: ignore[arg-type]
        again = job.checkpoint()
    assert worker.poll() is not None
    assert isinstance(again, DelayedSubmission) and isinstance(again.function, TrialJob)
    assert (again.function.number, again.function.task, again.function.resumed) == (1, 1, True)

    back = claim(st, 1, resumed=True)
    assert back is not None and back[0].number == 1 and back[1:] == (4, 1)

    job = again.function  # whole time slots without a finished epoch: requeued, then told failed
    for stalled in range(1, STALLED_TIMEOUTS + 1):
        job._started = time.time() - 240 * 60
        with (tmp_path / "t.log").open("a") as log:
            job._trial = _Trial(st, trial, 4, RunDir(tmp_path / "t"), subprocess.Popen(["true"]), log, 0.0)  # type: ignore[arg-type]
            nxt = job.checkpoint()
        if stalled < STALLED_TIMEOUTS:
            assert nxt is not None and nxt.function.stalled == stalled
            job = nxt.function
    assert nxt is None
    ended = study.trials[1]
    assert ended.state.name == "FAIL" and "no epoch finished in 2 time slots" in ended.user_attrs["error"]
    assert claim(st, 1, resumed=True) is None  # told before the job stopped: nothing to resume


def test_a_queued_trial_whose_tasks_never_take_it_is_given_up(tmp_path: Path) -> None:
    """Tasks that end without taking their trial (nodes that cannot reach the storage, say) are
    resubmitted a few times, then the trial is told failed with why, so tuning ends."""
    pytest.importorskip("optuna")
    from types import SimpleNamespace

    from tlbench.config.tuning import TuneOptions
    from tlbench.sweep.grid import Cell
    from tlbench.sweep.tune import MAX_RETRIES, Tuner
    from tlbench.sweep.tune_cluster import _submit_trials

    cell = Cell("k-s0", "run", "test_resnet", "keras-vgg19", "all", 0)
    submitted: list[int] = []

    def submit_array(tasks: list, gpus: int, nodes: int) -> list:
        submitted.append(len(tasks))
        return [SimpleNamespace(job_id=f"{100 + len(submitted)}_{i}") for i in range(len(tasks))]

    sweep = SimpleNamespace(
        folder=tmp_path, gpus=[], configs={cell.id: {"config": {"recipe": {}}}}, jobs={},
        options=SimpleNamespace(gpus_per_cell=1, time_min=60), submit_array=submit_array,
    )  # fmt: skip
    tuner = Tuner(sweep, [cell], {}, TuneOptions(tune="lr", trials=1))  # type: ignore[arg-type]
    rounds: dict[str, int] = {}
    for _ in range(MAX_RETRIES):
        assert len(_submit_trials(sweep, tuner, {}, rounds)) == 1 and not tuner.done()  # type: ignore[arg-type]
    assert _submit_trials(sweep, tuner, {}, rounds) == [] and tuner.done()  # type: ignore[arg-type]
    (trial,) = next(iter(tuner.studies.values())).study.trials
    assert (
        trial.state.name == "FAIL" and trial.user_attrs["error"] == "its task ended 3 times without taking it"
    )
    assert submitted == [1] * MAX_RETRIES
