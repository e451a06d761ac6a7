"""`tlbench data ...` as a user runs it: one-line errors, documented exit codes, JSON that parses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_help_is_instant_and_imports_no_torch() -> None:
    code = "import sys, tlbench.cli; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    res = subprocess.run([sys.executable, "-m", "tlbench", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "data" in res.stdout


@pytest.mark.parametrize("fmt", ["imagefolder", "ravi-csv", "pickle", "parquet"])
def test_synth_then_check(cli, tmp_path: Path, fmt: str) -> None:
    code, _, err = cli(
        "data", "synth", tmp_path / fmt, "--format", fmt, "--classes", 5, "--per-class", 12, "--size", 20
    )
    assert code == 0, err
    code, out, _ = cli("data", "check", tmp_path / fmt, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["format"] == fmt
    assert report["num_classes"] == 5 and report["images"] == 60
    assert report["standard_mini_imagenet"] is False
    assert report["image_size"] == {"min": [20, 20], "max": [20, 20]}
    assert report["corrupt"] == [] and report["usable"] is True


def test_synth_is_deterministic(cli, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            cli(
                "data",
                "synth",
                tmp_path / name,
                "--format",
                "pickle",
                "--classes",
                3,
                "--per-class",
                4,
                "--size",
                16,
            )[0]
            == 0
        )
    assert (tmp_path / "a/mini-imagenet-cache-train.pkl").read_bytes() == (
        tmp_path / "b/mini-imagenet-cache-train.pkl"
    ).read_bytes()


def test_synth_refuses_non_empty_and_unwritable(cli, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    code, _, err = cli("data", "synth", tmp_path / "full", "--classes", 2, "--per-class", 2)
    assert code == 6 and "not empty" in err and err.count("\n") == 1
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    code, _, err = cli("data", "synth", tmp_path / "file" / "sub", "--classes", 2, "--per-class", 2)
    assert code == 6 and "cannot write" in err and "Traceback" not in err


def test_check_lists_every_corrupt_image(cli, synth_sets: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(synth_sets["ravi-csv"], tmp_path / "d")
    images = sorted((copy / "images").iterdir())
    for victim in images[:3]:
        victim.write_bytes(b"\xff\xd8garbage")
    code, out, err = cli("data", "check", copy)
    assert code == 4
    for victim in images[:3]:
        assert victim.name in err
    code, out, _ = cli("data", "check", copy, "--json")
    report = json.loads(out)
    assert code == 4 and len(report["corrupt"]) == 3 and report["usable"] is False


def test_check_missing_and_unknown(cli, tmp_path: Path) -> None:
    code, _, err = cli("data", "check", tmp_path / "nope")
    assert (
        code == 4 and err.startswith("tlbench: error:") and "does not exist" in err and err.count("\n") == 1
    )
    code, _, err = cli("data", "check", tmp_path)
    assert code == 4 and "expected train/<wnid>/" in err


def test_check_forced_format_mismatch(cli, synth_sets: dict[str, Path]) -> None:
    code, _, err = cli("data", "check", synth_sets["pickle"], "--data-format", "imagefolder")
    assert code == 4 and "no train/" in err


def test_download_offline_fails_cleanly(cli, tmp_path: Path) -> None:
    code, _, err = cli("data", "download", "--dest", tmp_path / "mini")
    assert code == 8
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--data PATH" in err and "--data synthetic" in err


def test_downloaded_snapshot_layout_is_recognised(
    cli, synth_sets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What snapshot_download leaves: data/{train,validation,test}-*.parquet plus a README, in the data root
    root = tmp_path / "data-root"
    shutil.copytree(synth_sets["parquet"], root / "mini-imagenet")
    (root / "mini-imagenet" / "README.md").write_text("dataset card")
    monkeypatch.setenv("TLBENCH_DATA", str(root))
    from tlbench.data.dataset import load_data, resolve_data

    assert resolve_data(None) == root / "mini-imagenet"
    bundle = load_data(None, 24, progress=False)
    assert bundle.info["format"] == "parquet" and bundle.num_classes == 6


def test_no_data_anywhere_names_the_remedies(tmp_path: Path) -> None:
    from tlbench.data.dataset import resolve_data
    from tlbench.errors import DataError

    with pytest.raises(DataError, match=r"tlbench data download.*--data synthetic"):
        resolve_data(None)


def test_usage_error_exit_code(cli) -> None:
    code, _, _ = cli("data", "synth")
    assert code == 2


def test_atomic_writes_leave_readable_files(tmp_path: Path) -> None:
    import os
    import stat

    from tlbench._io import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    umask = os.umask(0)
    os.umask(umask)
    # as readable as a file opened normally (mkstemp alone would leave it 0600)
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
