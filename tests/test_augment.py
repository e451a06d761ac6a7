"""Tests of the batched Keras augmentation (tlbench.data.augment).

The fidelity reference is written out here from Keras' source (keras_preprocessing's
``apply_affine_transform`` + ``transform_matrix_offset_center`` + ``flip_axis``) and runs scipy per
channel, independently of the module's own matrix code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from tlbench.data.augment import (
    AffineParams,
    BatchTransform,
    KerasAugment,
    keras_matrices,
    sample_params,
    warp,
)

# Largest allowed |module - scipy| on images in [0, 255]; the brief's bound is 1e-3 * 255.
FIDELITY_TOL = 1e-2


def keras_reference(
    image_chw: np.ndarray,
    theta: float,
    tx: float,
    ty: float,
    shear: float,
    zx: float,
    zy: float,
    flip: bool,
) -> np.ndarray:
    """Keras' per-image affine augmentation on a (C, H, W) float array."""
    h, w = image_chw.shape[1:]
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shear_m = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    matrix = rotation @ shift @ shear_m @ zoom
    o_x, o_y = float(h) / 2 + 0.5, float(w) / 2 + 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    matrix = offset @ matrix @ reset
    out = np.stack(
        [ndi.affine_transform(ch, matrix[:2, :2], matrix[:2, 2], order=1, mode="nearest") for ch in image_chw]
    )
    if flip:
        out = np.stack([np.fliplr(ch) for ch in out])
    return out


# (theta deg, tx rows px, ty cols px, shear deg, zx, zy, flip)
CASES = {
    "identity": (0.0, 0.0, 0.0, 0.0, 1.0, 1.0, False),
    "flip_only": (0.0, 0.0, 0.0, 0.0, 1.0, 1.0, True),
    "rotate": (33.0, 0.0, 0.0, 0.0, 1.0, 1.0, False),
    "rotate_neg_big": (-170.0, 0.0, 0.0, 0.0, 1.0, 1.0, False),
    "shift_rows": (0.0, 4.7, 0.0, 0.0, 1.0, 1.0, False),
    "shift_cols": (0.0, 0.0, -7.3, 0.0, 1.0, 1.0, False),
    "shear_keras": (0.0, 0.0, 0.0, 0.2, 1.0, 1.0, False),
    "shear_big": (0.0, 0.0, 0.0, -25.0, 1.0, 1.0, False),
    "zoom_aniso": (0.0, 0.0, 0.0, 0.0, 0.8, 1.2, False),
    "zoom_in": (0.0, 0.0, 0.0, 0.0, 0.55, 0.7, False),
    "combined": (-38.0, 3.1, -6.2, 0.17, 1.18, 0.83, False),
    "combined_flip": (21.5, -5.5, 2.25, -0.12, 0.91, 1.07, True),
    "combined_big_flip": (127.0, 9.0, -11.0, 18.0, 1.4, 0.6, True),
}


def _params(rows: list[tuple[float, float, float, float, float, float, bool]]) -> AffineParams:
    cols = list(zip(*rows, strict=True))
    floats = [torch.tensor(c, dtype=torch.float64) for c in cols[:6]]
    return AffineParams(*floats, flip=torch.tensor(cols[6], dtype=torch.bool))


@pytest.mark.parametrize(
    ("height", "width", "channels"), [(32, 32, 3), (24, 40, 3), (40, 24, 1), (17, 30, 2)]
)
def test_warp_matches_keras_scipy_reference(height: int, width: int, channels: int) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    names = list(CASES)
    images = rng.uniform(0.0, 255.0, size=(len(names), channels, height, width))
    params = _params([CASES[k] for k in names])
    out = warp(torch.from_numpy(images).float(), keras_matrices(params, height, width)).double().numpy()
    for i, name in enumerate(names):
        expected = keras_reference(images[i], *CASES[name])
        err = np.abs(out[i] - expected).max()
        assert err < FIDELITY_TOL, f"{name} at {height}x{width}: max abs error {err:.2e}"


def test_warp_in_float64_is_essentially_exact() -> None:
    rng = np.random.default_rng(7)
    names = list(CASES)
    images = rng.uniform(0.0, 255.0, size=(len(names), 3, 24, 40))
    params = _params([CASES[k] for k in names])
    out = warp(torch.from_numpy(images), keras_matrices(params, 24, 40)).numpy()
    for i, name in enumerate(names):
        np.testing.assert_allclose(out[i], keras_reference(images[i], *CASES[name]), atol=1e-8, err_msg=name)


def test_warp_is_not_a_flip_of_the_true_centre() -> None:
    # Keras rotates about (H/2 + 0.5, W/2 + 0.5), half a pixel off the true centre: a 180 degree
    # rotation sends output (r, c) to input (H + 1 - r, W + 1 - c), not (H - 1 - r, W - 1 - c).
    h, w = 6, 9
    m = keras_matrices(_params([(180.0, 0.0, 0.0, 0.0, 1.0, 1.0, False)]), h, w)[0]
    expected = torch.tensor(
        [[-1.0, 0.0, h + 1.0], [0.0, -1.0, w + 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(m, expected, atol=1e-12, rtol=0)


def test_keras_matrices_shape_dtype_and_flip_folding() -> None:
    rows = [CASES["combined"], (*CASES["combined"][:6], True)]
    m = keras_matrices(_params(rows), 24, 40)
    assert m.shape == (2, 3, 3) and m.dtype == torch.float64
    # The flipped matrix is the unflipped one applied to (r, W - 1 - c).
    flip = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 39.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(m[1], m[0] @ flip)
    torch.testing.assert_close(m[:, 2], torch.tensor([[0.0, 0.0, 1.0]] * 2, dtype=torch.float64))


@pytest.mark.parametrize("channels_last", [False, True])
def test_identity_params_return_input(channels_last: bool) -> None:
    images = torch.rand(5, 3, 24, 40, generator=torch.Generator().manual_seed(0)) * 255
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    out = warp(images, keras_matrices(AffineParams.identity(5), 24, 40))
    assert out.shape == images.shape and out.dtype == images.dtype
    torch.testing.assert_close(out, images, atol=1e-3, rtol=0)


def test_channels_last_input_gives_same_result() -> None:
    images = torch.rand(4, 3, 20, 28, generator=torch.Generator().manual_seed(1)) * 255
    params = sample_params(KerasAugment(), 4, 20, 28, generator=torch.Generator().manual_seed(2))
    m = keras_matrices(params, 20, 28)
    a = warp(images, m)
    b = warp(images.contiguous(memory_format=torch.channels_last), m)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_warp_is_a_single_grid_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = F.grid_sample

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "grid_sample", counting)
    transform = BatchTransform(KerasAugment(), seed=0)
    transform(torch.randint(0, 256, (16, 20, 24, 3), dtype=torch.uint8))
    assert len(calls) == 1


def test_sampled_parameter_distributions() -> None:
    n, h, w = 20000, 30, 50
    aug = KerasAugment()
    p = sample_params(aug, n, h, w, generator=torch.Generator().manual_seed(123))
    for t in (p.theta, p.tx, p.ty, p.shear, p.zx, p.zy):
        assert t.shape == (n,) and t.dtype == torch.float64
    assert p.flip.shape == (n,) and p.flip.dtype == torch.bool

    def check_uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        assert t.min() >= lo and t.max() <= hi
        half = (hi - lo) / 2
        assert abs(t.mean().item() - (lo + hi) / 2) < 5 * half / math.sqrt(3 * n)
        assert t.std().item() == pytest.approx(half / math.sqrt(3), rel=0.02)
        # Fills the range, not a narrower one.
        assert t.min() < lo + 0.01 * half and t.max() > hi - 0.01 * half

    check_uniform(p.theta, -40.0, 40.0)
    check_uniform(p.tx, -0.2 * h, 0.2 * h)  # rows scale by the height
    check_uniform(p.ty, -0.2 * w, 0.2 * w)  # columns scale by the width
    check_uniform(p.shear, -0.2, 0.2)  # degrees
    check_uniform(p.zx, 0.8, 1.2)
    check_uniform(p.zy, 0.8, 1.2)
    corr = torch.corrcoef(torch.stack([p.zx, p.zy]))[0, 1].item()
    assert abs(corr) < 0.05
    assert p.flip.double().mean().item() == pytest.approx(0.5, abs=0.02)
    # All seven draws are mutually independent (no reused random numbers).
    cols = torch.stack([p.theta, p.tx, p.ty, p.shear, p.zx, p.zy, p.flip.double()])
    off_diag = torch.corrcoef(cols) - torch.eye(7, dtype=torch.float64)
    assert off_diag.abs().max() < 0.05


def test_sample_params_pixel_shifts_zoom_pair_and_no_flip() -> None:
    aug = KerasAugment(
        width_shift_range=5, height_shift_range=2.5, zoom_range=(0.5, 1.0), horizontal_flip=False
    )
    p = sample_params(aug, 5000, 100, 200, generator=torch.Generator().manual_seed(0))
    assert p.ty.abs().max() <= 5 and p.ty.abs().max() > 4.9  # pixels, not * W
    assert p.tx.abs().max() <= 2.5 and p.tx.abs().max() > 2.4
    assert p.zx.min() >= 0.5 and p.zx.max() <= 1.0 and p.zy.min() >= 0.5 and p.zy.max() <= 1.0
    assert not p.flip.any()


def test_zero_ranges_give_identity() -> None:
    aug = KerasAugment(0.0, 0.0, 0.0, 0.0, 0.0, horizontal_flip=False)
    p = sample_params(aug, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(keras_matrices(p, 16, 16), torch.eye(3, dtype=torch.float64).expand(8, 3, 3))


@pytest.mark.parametrize(
    "kwargs", [{"rotation_range": -1.0}, {"zoom_range": (1.2, 0.8)}, {"zoom_range": 1.0}]
)
def test_invalid_settings_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        KerasAugment(**kwargs)  # type: ignore[arg-type]


def test_sample_params_deterministic_given_generator_state() -> None:
    aug = KerasAugment()
    a = sample_params(aug, 100, 32, 48, generator=torch.Generator().manual_seed(5))
    b = sample_params(aug, 100, 32, 48, generator=torch.Generator().manual_seed(5))
    c = sample_params(aug, 100, 32, 48, generator=torch.Generator().manual_seed(6))
    for name in ("theta", "tx", "ty", "shear", "zx", "zy", "flip"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.theta, c.theta)


def _uint8_batch(n: int = 6, h: int = 24, w: int = 32, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, h, w, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_batch_transform_determinism() -> None:
    batch = _uint8_batch()
    aug = KerasAugment()
    a = BatchTransform(aug, seed=0)(batch)
    b = BatchTransform(aug, seed=0)(batch)
    c = BatchTransform(aug, seed=1)(batch)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # An explicit generator overrides the transform's own one.
    d = BatchTransform(aug, seed=99)(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, d)
    # The own generator advances: the next batch gets new transforms.
    t = BatchTransform(aug, seed=0)
    assert not torch.allclose(t(batch), t(batch))


def test_batch_transform_augmented_matches_warp_then_rescale() -> None:
    batch = _uint8_batch()
    out = BatchTransform(KerasAugment(), seed=3)(batch)
    params = sample_params(KerasAugment(), 6, 24, 32, generator=torch.Generator().manual_seed(3))
    expected = warp(batch.permute(0, 3, 1, 2).float(), keras_matrices(params, 24, 32)) / 255
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("augment", [None, KerasAugment()])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_transform_output_format(augment: KerasAugment | None, channels_last: bool) -> None:
    batch = _uint8_batch(n=4, h=20, w=36)
    out = BatchTransform(augment, channels_last=channels_last)(batch)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 20, 36)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_batch_transform_without_augment_is_rescale() -> None:
    batch = _uint8_batch()
    out = BatchTransform(None)(batch)
    assert torch.equal(out, batch.permute(0, 3, 1, 2).float() / 255)


def test_batch_transform_normalizes() -> None:
    batch = _uint8_batch()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = BatchTransform(None, mean=mean, std=std)(batch)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    expected = (batch.permute(0, 3, 1, 2).float() / 255 - m) / s
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    aug_out = BatchTransform(KerasAugment(), mean=mean, std=std, seed=4)(batch)
    aug_plain = BatchTransform(KerasAugment(), seed=4)(batch)
    torch.testing.assert_close(aug_out, (aug_plain - m) / s, atol=1e-5, rtol=1e-5)


def test_batch_transform_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        BatchTransform(None)(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError):
        BatchTransform(None, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))(_uint8_batch(c=1))
    with pytest.raises(ValueError):
        BatchTransform(None, mean=(0.5, 0.5, 0.5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    batch = _uint8_batch(n=8, h=48, w=40)
    aug = KerasAugment()
    cpu = BatchTransform(aug, seed=11, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))(batch)
    previous = torch.get_float32_matmul_precision()
    try:
        # TF32 matmuls elsewhere in a training process must not move the sampling grid.
        torch.set_float32_matmul_precision("medium")
        for channels_last in (False, True):
            transform = BatchTransform(
                aug, seed=11, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), channels_last=channels_last
            )
            gpu = transform(batch.cuda())
            assert gpu.is_cuda and gpu.dtype == torch.float32
            if channels_last:
                assert gpu.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
        images = torch.rand(8, 3, 48, 40, generator=torch.Generator().manual_seed(0)) * 255
        params = sample_params(aug, 8, 48, 40, generator=torch.Generator().manual_seed(1))
        m = keras_matrices(params, 48, 40)
        torch.testing.assert_close(warp(images.cuda(), m.cuda()).cpu(), warp(images, m), atol=1e-2, rtol=0)
    finally:
        torch.set_float32_matmul_precision(previous)
