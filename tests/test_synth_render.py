"""Tests for the synthetic image renderer (tlbench.data.render)."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.data.render import (
    HUES,
    MAX_CLASSES,
    SHAPES,
    TEXTURES,
    class_attributes,
    class_description,
    render_class_images,
)

# --- shape, dtype, determinism, independence ---------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32, 84, 224])
def test_shape_and_dtype(size: int) -> None:
    images = render_class_images(7, 3, size, seed=0)
    assert images.shape == (3, size, size, 3)
    assert images.dtype == np.uint8
    assert images.flags.c_contiguous
    assert images.std() > 10  # not blank


def test_zero_images() -> None:
    assert render_class_images(0, 0, 32, seed=0).shape == (0, 32, 32, 3)


def test_same_arguments_give_identical_bytes() -> None:
    a = render_class_images(12, 10, 40, seed=3, num_classes=50)
    b = render_class_images(12, 10, 40, seed=3, num_classes=50)
    assert a.tobytes() == b.tobytes()


def test_different_seed_or_class_gives_different_images() -> None:
    base = render_class_images(12, 4, 40, seed=3)
    assert not np.array_equal(base, render_class_images(12, 4, 40, seed=4))
    assert not np.array_equal(base, render_class_images(13, 4, 40, seed=3))


def test_images_within_a_call_differ() -> None:
    images = render_class_images(5, 8, 32, seed=0).reshape(8, -1)
    assert len({row.tobytes() for row in images}) == 8


def test_classes_are_independent_of_order_and_num_classes() -> None:
    classes = [3, 0, 9, 4]
    forward = {k: render_class_images(k, 5, 24, seed=11, num_classes=10) for k in classes}
    backward = {k: render_class_images(k, 5, 24, seed=11, num_classes=100) for k in reversed(classes)}
    for k in classes:
        assert np.array_equal(forward[k], backward[k])


def test_shorter_request_is_a_prefix_of_a_longer_one() -> None:
    # 70 images span two generator blocks of 64; 66 and 5 cut inside the second and first block.
    long = render_class_images(2, 70, 20, seed=5)
    assert np.array_equal(render_class_images(2, 66, 20, seed=5), long[:66])
    assert np.array_equal(render_class_images(2, 5, 20, seed=5), long[:5])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_index": 10, "num_classes": 10}, "class_index"),
        ({"class_index": -1}, "class_index"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": MAX_CLASSES + 1}, "num_classes"),
        ({"n": -1}, "n must"),
        ({"size": 15}, "size"),
        ({"seed": -2}, "seed"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, int], match: str) -> None:
    args = {"class_index": 0, "n": 1, "size": 32, "seed": 0, "num_classes": 100} | kwargs
    with pytest.raises(ValueError, match=match):
        render_class_images(**args)


# --- attribute design ------------------------------------------------------------------------------


def test_attribute_triples_are_unique_and_cover_the_vocabulary() -> None:
    triples = [class_attributes(k) for k in range(MAX_CLASSES)]
    assert MAX_CLASSES == 100
    assert len(set(triples)) == MAX_CLASSES
    for shape, hue, texture in triples:
        assert 0 <= shape < len(SHAPES) and 0 <= hue < len(HUES) and 0 <= texture < len(TEXTURES)
    assert len({class_description(k) for k in range(MAX_CLASSES)}) == MAX_CLASSES


def test_no_single_attribute_identifies_a_class() -> None:
    triples = np.array([class_attributes(k) for k in range(MAX_CLASSES)])
    for column in range(3):
        counts = np.bincount(triples[:, column])
        assert counts.min() >= 20, counts
    # Any small prefix mixes the attributes too: the first 8 classes are a 2 x 2 x 2 cube.
    assert {class_attributes(k) for k in range(8)} == {
        (s, h, t) for s in (0, 1) for h in (0, 1) for t in (0, 1)
    }


def test_class_attributes_out_of_range() -> None:
    with pytest.raises(ValueError):
        class_attributes(MAX_CLASSES)


# --- learnability ------------------------------------------------------------------------------------


def _features(images: np.ndarray) -> np.ndarray:
    """8 x 8 block-mean pixels plus a 4 x 4 x 4 joint RGB histogram (square-rooted)."""
    n, size = images.shape[:2]
    cell = size // 8
    pixels = images.astype(np.float32).reshape(n, 8, cell, 8, cell, 3).mean(axis=(2, 4)) / 255
    levels = (images // 64).astype(np.int64)
    codes = (levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]).reshape(n, -1)
    hist = np.stack([np.bincount(row, minlength=64) for row in codes]) / codes.shape[1]
    return np.concatenate([pixels.reshape(n, -1), np.sqrt(hist)], axis=1)


def _dataset(classes: range, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.concatenate([render_class_images(k, per_class, 32, seed, num_classes=10) for k in classes])
    return _features(images), np.repeat(np.arange(len(classes)), per_class)


def test_classes_are_learnable_but_not_trivial() -> None:
    classes = range(10)
    x_train, y_train = _dataset(classes, 60, seed=0)
    x_test, y_test = _dataset(classes, 20, seed=1)

    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    a = np.hstack([(x_train - mean) / std, np.ones((len(x_train), 1))])
    b = np.hstack([(x_test - mean) / std, np.ones((len(x_test), 1))])
    targets = np.eye(len(classes))[y_train]
    weights = np.linalg.solve(a.T @ a + 100.0 * np.eye(a.shape[1]), a.T @ targets)  # ridge, one-vs-rest
    train_acc = float(np.mean((a @ weights).argmax(axis=1) == y_train))
    test_acc = float(np.mean((b @ weights).argmax(axis=1) == y_test))
    print(f"ridge on pixels + colour histogram, 10 classes: train {train_acc:.3f}, test {test_acc:.3f}")

    chance = 1 / len(classes)
    assert test_acc > 2.5 * chance  # measured 0.46-0.52 over six seed pairs
    assert test_acc < 0.9  # a linear model must not solve it
    assert train_acc < 0.99
