"""`tlbench data download`: fetch `timm/mini-imagenet` from the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from tlbench._util import first_line
from tlbench.data.dataset import default_data_root
from tlbench.errors import DownloadError

HF_REPO = "timm/mini-imagenet"


def download(dest: str | Path | None = None) -> Path:
    """Download the parquet shards into `dest` (default: `<data root>/mini-imagenet`)."""
    from huggingface_hub import snapshot_download

    target = Path(dest).expanduser() if dest else default_data_root() / "mini-imagenet"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create {target} ({exc.strerror or exc})", "choose a writable --dest"
        ) from exc
    try:
        snapshot_download(
            repo_id=HF_REPO,
            repo_type="dataset",
            local_dir=target,
            allow_patterns=["data/*.parquet", "README.md"],
        )
    except Exception as exc:  # the hub client raises many types for "no network"
        raise DownloadError(
            f"could not download {HF_REPO} ({first_line(exc, 160)})",
            f"on a machine with network, download it and copy it to {target}; or pass --data PATH "
            "to an existing copy (imagefolder, ravi-csv, pickle or parquet); or use --data synthetic",
        ) from exc
    return target
