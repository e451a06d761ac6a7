"""Every on-disk layout round-trips from `data synth` to the right images with the right labels."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from tlbench.data.classes import class_hash, mini_imagenet_wnids
from tlbench.data.dataset import NonStandardClassesWarning, load_data, split_pooled
from tlbench.data.formats import detect_format, read_source
from tlbench.data.render import render_class_images
from tlbench.errors import DataError

FORMATS = ("imagefolder", "ravi-csv", "pickle", "parquet")
WNIDS = list(mini_imagenet_wnids())[:6]


def _load(path: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonStandardClassesWarning)
        return load_data(path, 24, progress=False, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_is_detected(synth_sets: dict[str, Path], fmt: str) -> None:
    assert detect_format(synth_sets[fmt]) == fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_right_images_and_labels(synth_sets: dict[str, Path], fmt: str) -> None:
    bundle = _load(synth_sets[fmt])
    assert bundle.classes == WNIDS
    assert bundle.info["class_list_hash"] == class_hash(WNIDS)
    assert bundle.info["format"] == fmt
    total = len(bundle.train) + len(bundle.val) + (len(bundle.test) if bundle.test else 0)
    assert total == 6 * 12
    # Every packed image must be (nearly, after JPEG) one of the rendered images of its own class.
    rendered = np.stack([render_class_images(k, 12, 24, 0, num_classes=6) for k in range(6)]).astype(
        np.float32
    )
    flat = rendered.reshape(6 * 12, -1)
    for split in (bundle.train, bundle.val):
        images = split.images.reshape(len(split), -1).astype(np.float32)
        for img, label in zip(images, split.labels, strict=True):
            dist = np.abs(flat - img).mean(axis=1)
            best = int(dist.argmin())
            assert best // 12 == label, f"{fmt}: image labelled {label} looks like class {best // 12}"
            if fmt == "pickle":  # lossless
                assert dist[best] == 0
            else:  # JPEG q95 on noisy images: close to its source, far from every other image
                assert dist[best] < 0.5 * np.partition(dist, 1)[1]


@pytest.mark.parametrize("fmt", ["ravi-csv", "pickle"])
def test_few_shot_forms_are_pooled_and_split_five_to_one(synth_sets: dict[str, Path], fmt: str) -> None:
    bundle = _load(synth_sets[fmt])
    assert bundle.test is None
    assert "pooled" in bundle.info["split_rule"] and "seed 0" in bundle.info["split_rule"]
    for c in range(6):
        assert (bundle.train.labels == c).sum() == 10
        assert (bundle.val.labels == c).sum() == 2
    assert not set(bundle.train.indices) & set(bundle.val.indices)


def test_split_is_deterministic_per_seed(synth_sets: dict[str, Path]) -> None:
    a, b = _load(synth_sets["pickle"], split_seed=1), _load(synth_sets["pickle"], split_seed=1)
    c = _load(synth_sets["pickle"], split_seed=2)
    assert np.array_equal(a.val.indices, b.val.indices)
    assert not np.array_equal(a.val.indices, c.val.indices)
    assert a.info["split_seed"] == 1


def test_split_pooled_600_per_class_is_500_100() -> None:
    labels = np.repeat(np.arange(3), 600)
    train, val = split_pooled(labels, 3, seed=0)
    assert len(train) == 1500 and len(val) == 300
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(1800))


def test_given_splits_are_kept(synth_sets: dict[str, Path]) -> None:
    bundle = _load(synth_sets["parquet"])
    assert bundle.test is not None and len(bundle.test) == 6 * 1
    assert bundle.info["split_rule"].startswith("as given")
    assert bundle.info["counts"] == {"train": 6 * 9, "val": 6 * 2, "test": 6}


def test_pickle_validation_spelling(synth_sets: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(synth_sets["pickle"], tmp_path / "p")
    (copy / "mini-imagenet-cache-val.pkl").rename(copy / "mini-imagenet-cache-validation.pkl")
    source = read_source(copy)
    assert {i.group for i in source.items} == {"train", "val", "test"}
    shutil.copy(copy / "mini-imagenet-cache-validation.pkl", copy / "mini-imagenet-cache-val.pkl")
    with pytest.raises(DataError, match="keep one"):
        read_source(copy)


def test_pickle_refuses_code(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps({"image_data": Evil()}))
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        read_source(tmp_path).items  # noqa: B018 - listing the items unpickles


def test_parquet_without_class_names_falls_back_to_standard(
    synth_sets: dict[str, Path], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    copy = shutil.copytree(synth_sets["parquet"], tmp_path / "pq")
    for shard in (copy / "data").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.replace_schema_metadata(None), shard)
    source = read_source(copy)
    assert any("standard sorted 100" in n for n in source.notes)
    assert source.classes == WNIDS  # labels 0..5 are the first six sorted wnids


def test_unknown_layout_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match=r"imagefolder.*ravi-csv.*pickle.*parquet"):
        read_source(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_source(tmp_path / "nope")


def test_malformed_csv(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "train.csv").write_text("name,wnid\na.jpg,n01532829\n")
    with pytest.raises(DataError, match="filename,label"):
        read_source(tmp_path)


def test_vinyals_csv_header_is_read_and_noted(tmp_path: Path, synth_sets: dict[str, Path]) -> None:
    copy = shutil.copytree(synth_sets["ravi-csv"], tmp_path / "v")
    for csv in copy.glob("*.csv"):
        csv.write_text(csv.read_text().replace("filename,label", "filename,class", 1))
    source = read_source(copy)
    assert any("Vinyals" in n for n in source.notes)
    assert source.classes == WNIDS


def test_imagefolder_class_mismatch_is_an_error(synth_sets: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(synth_sets["imagefolder"], tmp_path / "if")
    shutil.rmtree(copy / "val" / WNIDS[0])
    with pytest.raises(DataError, match=f"different classes.*only in train: \\['{WNIDS[0]}'\\]"):
        _load(copy)


def test_imagefolder_without_val(synth_sets: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(synth_sets["imagefolder"], tmp_path / "if")
    shutil.rmtree(copy / "val")
    with pytest.raises(DataError, match="no val/"):
        read_source(copy)


def test_nonstandard_classes_warn_standard_do_not(tmp_path: Path) -> None:
    from tlbench.data.synth import write_synthetic

    with pytest.warns(NonStandardClassesWarning, match="not the standard mini-ImageNet 100"):
        load_data(write_synthetic(tmp_path / "six", "pickle", 6, 6, 16, progress=False), 16, progress=False)
    full = write_synthetic(tmp_path / "hundred", "pickle", 100, 3, 16, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonStandardClassesWarning)
        bundle = load_data(full, 16, progress=False)
    assert bundle.info["standard_mini_imagenet"] is True
    assert bundle.info["class_list_hash"] == class_hash(list(mini_imagenet_wnids()))


def test_synthetic_spec_builds_once(tmp_path: Path) -> None:
    bundle = _load("synthetic:4x6@24")
    assert bundle.num_classes == 4 and bundle.info["format"] == "imagefolder"
    marker = Path(bundle.info["root"]) / ".complete"
    assert json.loads(marker.read_text())["per_class"] == 6
    mtime = marker.stat().st_mtime_ns
    _load("synthetic:4x6@24")
    assert marker.stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="cannot parse"):
        _load("synthetic:lots")


def test_parquet_with_word_class_names_maps_to_wnids(tmp_path: Path) -> None:
    import json as _json

    import pyarrow.parquet as pq

    from tlbench.data.synth import write_synthetic

    root = write_synthetic(tmp_path / "pq100", "parquet", classes=100, per_class=4, size=16, progress=False)
    for shard in (root / "data").glob("*.parquet"):
        table = pq.read_table(shard)
        meta = _json.loads(table.schema.metadata[b"huggingface"])
        meta["info"]["features"]["label"]["names"] = [f"class name {i}" for i in range(100)]
        pq.write_table(table.replace_schema_metadata({"huggingface": _json.dumps(meta)}), shard)
    source = read_source(root)
    assert source.classes == list(mini_imagenet_wnids())
    assert any("not wnids" in n for n in source.notes)


def test_one_class_and_parquet_without_images_are_errors(synth_sets: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    copy = shutil.copytree(synth_sets["imagefolder"], tmp_path / "one")
    for wnid in WNIDS[1:]:
        shutil.rmtree(copy / "train" / wnid)
        shutil.rmtree(copy / "val" / wnid)
    with pytest.raises(DataError, match="at least 2 classes"):
        _load(copy)
    pqcopy = shutil.copytree(synth_sets["parquet"], tmp_path / "pq")
    for shard in (pqcopy / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(shard).drop(["image"]), shard)
    with pytest.raises(DataError, match="not image and label"):
        read_source(pqcopy)
