"""Keras' ``ImageDataGenerator`` training augmentation as one batched affine warp.

The reference recipe augments with ``ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode='nearest')``
and ``rescale=1/255``. Keras warps one image at a time with ``scipy.ndimage.affine_transform``; here
the same per-image transforms are drawn for a whole batch, turned into a batch of matrices and applied
by a single ``torch.nn.functional.grid_sample`` call on the batch's own device.

Keras' semantics (``keras_preprocessing.image``), per image:

* rotation ``theta ~ U(-rotation_range, rotation_range)`` degrees;
* shifts ``tx ~ U(-h, h) * H`` along rows and ``ty ~ U(-w, w) * W`` along columns, in pixels (a range
  of 1 or more is already in pixels);
* shear ``~ U(-shear_range, shear_range)`` in **degrees**;
* zooms ``zx, zy ~ U(1 - z, 1 + z)``, drawn independently;
* ``M = R @ S @ Sh @ Z`` on homogeneous ``(row, col, 1)`` coordinates, moved to Keras' centre and
  read as "output pixel -> input position", sampled bilinearly with the edge pixels repeated;
* a horizontal flip with p = 0.5, applied after the warp.

Here the flip is folded into the matrix, so the whole augmentation is one resampling. Because the
bilinear weights sum to one and the border is repeated, rescaling before or after the warp is the
same map; ``BatchTransform`` rescales after it, as Keras does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AffineParams",
    "BatchTransform",
    "KerasAugment",
    "keras_matrices",
    "sample_params",
    "warp",
]


@dataclass(frozen=True)
class KerasAugment:
    """The random affine augmentation of Keras' ``ImageDataGenerator``.

    Defaults are the reference recipe's. Only ``fill_mode='nearest'`` and bilinear sampling
    (Keras' ``order=1``) are reproduced, and only Keras' own centre (see ``keras_matrices``).

    Attributes:
        rotation_range: Maximum rotation in degrees; ``theta ~ U(-r, r)``.
        width_shift_range: Column shift; a value below 1 is a fraction of the width, 1 or more is
            pixels. Keras draws a Python ``int`` from a discrete set; here every shift is continuous.
        height_shift_range: Row shift, as ``width_shift_range`` but relative to the height.
        shear_range: Maximum shear angle in **degrees** (Keras converts with ``np.deg2rad``).
        zoom_range: ``z`` for ``U(1 - z, 1 + z)``, or an explicit ``(lo, hi)``; the row and column
            zooms are drawn independently. Above 1 shows more of the image (zooms out).
        horizontal_flip: Flip half of the images left-right, after the warp.
    """

    rotation_range: float = 40.0
    width_shift_range: float = 0.2
    height_shift_range: float = 0.2
    shear_range: float = 0.2
    zoom_range: float | tuple[float, float] = 0.2
    horizontal_flip: bool = True

    def __post_init__(self) -> None:
        for name in ("rotation_range", "width_shift_range", "height_shift_range", "shear_range"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        lo, hi = self.zoom_bounds
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo:
            raise ValueError(f"zoom_range must give 0 < lo <= hi, got {self.zoom_range!r}")

    @property
    def zoom_bounds(self) -> tuple[float, float]:
        """The ``(lo, hi)`` interval the zooms are drawn from."""
        if isinstance(self.zoom_range, int | float):
            return (1.0 - float(self.zoom_range), 1.0 + float(self.zoom_range))
        if len(self.zoom_range) != 2:
            raise ValueError(f"zoom_range must be a float or a (lo, hi) pair, got {self.zoom_range!r}")
        return (float(self.zoom_range[0]), float(self.zoom_range[1]))


@dataclass
class AffineParams:
    """Per-sample transform parameters, each a tensor of shape ``(N,)``.

    Attributes:
        theta: Rotation in degrees.
        tx: Shift along rows, in pixels.
        ty: Shift along columns, in pixels.
        shear: Shear angle in degrees.
        zx: Zoom along rows.
        zy: Zoom along columns.
        flip: Boolean; flip the warped image left-right.
    """

    theta: Tensor
    tx: Tensor
    ty: Tensor
    shear: Tensor
    zx: Tensor
    zy: Tensor
    flip: Tensor

    def __len__(self) -> int:
        return self.theta.shape[0]

    def to(self, device: torch.device | str | None) -> AffineParams:
        """Returns the parameters moved to ``device``."""
        return AffineParams(*(getattr(self, k).to(device) for k in _PARAM_FIELDS))

    @classmethod
    def identity(cls, n: int, device: torch.device | str | None = None) -> AffineParams:
        """``n`` parameter sets that leave an image unchanged."""
        zeros = torch.zeros(n, dtype=torch.float64, device=device)
        ones = torch.ones(n, dtype=torch.float64, device=device)
        flip = torch.zeros(n, dtype=torch.bool, device=device)
        return cls(zeros, zeros.clone(), zeros.clone(), zeros.clone(), ones, ones.clone(), flip)


_PARAM_FIELDS = ("theta", "tx", "ty", "shear", "zx", "zy", "flip")


def _shift_scale(shift_range: float, size: int) -> float:
    # Keras: a range below 1 is a fraction of the image size, otherwise it is already in pixels.
    return float(size) if shift_range < 1 else 1.0


def sample_params(
    aug: KerasAugment,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AffineParams:
    """Draws ``n`` independent Keras transforms.

    The numbers are drawn (in float64) on the generator's device, or from torch's default CPU
    generator when ``generator`` is None, and are then moved to ``device``. The draws are a fixed
    sequence, so the result is a function of the generator's state only; a range of 0 still
    consumes its draws and yields the neutral value.

    Args:
        aug: The augmentation settings.
        n: Number of samples.
        height: Image height H (rows); scales fractional ``height_shift_range``.
        width: Image width W (columns); scales fractional ``width_shift_range``.
        generator: Source of randomness.
        device: Where the returned tensors live; None keeps the generator's device.

    Returns:
        The parameters, float64 (``flip`` bool), each of shape ``(n,)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def uniform(lo: float, hi: float) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device)
        return u.mul_(hi - lo).add_(lo)

    rot = aug.rotation_range
    theta = uniform(-rot, rot)
    hs = aug.height_shift_range
    tx = uniform(-hs, hs).mul_(_shift_scale(hs, height))
    ws = aug.width_shift_range
    ty = uniform(-ws, ws).mul_(_shift_scale(ws, width))
    shear = uniform(-aug.shear_range, aug.shear_range)
    zlo, zhi = aug.zoom_bounds
    zx = uniform(zlo, zhi)
    zy = uniform(zlo, zhi)
    flip = torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device) < 0.5
    if not aug.horizontal_flip:
        flip.zero_()
    params = AffineParams(theta=theta, tx=tx, ty=ty, shear=shear, zx=zx, zy=zy, flip=flip)
    return params.to(device) if device is not None else params


def _stack3(rows: list[list[Tensor]]) -> Tensor:
    """Builds an ``(N, 3, 3)`` tensor from a 3x3 nested list of ``(N,)`` tensors."""
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def keras_matrices(params: AffineParams, height: int, width: int) -> Tensor:
    """The centred Keras matrices, with the horizontal flip folded in.

    ``M = R @ S @ Sh @ Z`` exactly as ``keras_preprocessing``'s ``apply_affine_transform`` builds it,
    then ``T(o) @ M @ T(-o)`` with Keras' offset ``o = (H / 2 + 0.5, W / 2 + 0.5)``. That is Keras'
    own choice (``transform_matrix_offset_center``), half a pixel off the true centre
    ``((H - 1) / 2, (W - 1) / 2)``; it is reproduced exactly, not corrected. Keras flips the warped
    image afterwards, so a flipped sample gets ``M_c @ F`` with ``F: (r, c) -> (r, W - 1 - c)``.

    Args:
        params: Per-sample parameters (angles in degrees, shifts in pixels).
        height: Image height H.
        width: Image width W.

    Returns:
        ``(N, 3, 3)`` float64 matrices on the parameters' device; each maps an output pixel
        ``(row, col, 1)`` to the input position ``(row, col, 1)`` it samples.
    """
    f64 = torch.float64
    theta = torch.deg2rad(params.theta.to(f64))
    shear = torch.deg2rad(params.shear.to(f64))
    tx, ty = params.tx.to(f64), params.ty.to(f64)
    zx, zy = params.zx.to(f64), params.zy.to(f64)
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = _stack3([[cos, -sin, zero], [sin, cos, zero], [zero, zero, one]])
    shift = _stack3([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
    shear_m = _stack3([[one, -torch.sin(shear), zero], [zero, torch.cos(shear), zero], [zero, zero, one]])
    zoom = _stack3([[zx, zero, zero], [zero, zy, zero], [zero, zero, one]])
    matrix = rotation @ shift @ shear_m @ zoom

    # Keras' centre: o = size / 2 + 0.5 (not (size - 1) / 2); kept as Keras has it.
    o_r, o_c = height / 2 + 0.5, width / 2 + 0.5
    eye = torch.eye(3, dtype=f64, device=theta.device)
    offset, reset = eye.clone(), eye.clone()
    offset[0, 2], offset[1, 2] = o_r, o_c
    reset[0, 2], reset[1, 2] = -o_r, -o_c
    centred = offset @ matrix @ reset

    # Output column c reads the unflipped warp at column W - 1 - c.
    sign = 1.0 - 2.0 * params.flip.to(device=theta.device, dtype=f64)
    flip = _stack3([[one, zero, zero], [zero, sign, (1.0 - sign) * ((width - 1) / 2)], [zero, zero, one]])
    return centred @ flip


def _normalized_theta(matrices: Tensor, height: int, width: int) -> Tensor:
    """Converts pixel ``(row, col)`` matrices to ``(N, 2, 3)`` maps on grid_sample's ``(x, y)``.

    With ``align_corners=True`` pixel ``c`` of ``W`` sits at ``x = 2 c / (W - 1) - 1``, so
    ``(x, y, 1) = D^-1 (col, row, 1)`` and the normalized map is ``D^-1 P M P D``, where ``P`` swaps
    rows and columns. Computed in float64.
    """
    m = matrices.to(torch.float64)
    sw, sh = max(width - 1, 1) / 2, max(height - 1, 1) / 2
    to_pixel = m.new_tensor([[0.0, sh, sh], [sw, 0.0, sw], [0.0, 0.0, 1.0]])  # (x, y, 1) -> (row, col, 1)
    to_norm = m.new_tensor([[0.0, 1.0 / sw, -1.0], [1.0 / sh, 0.0, -1.0], [0.0, 0.0, 1.0]])  # inverse
    return (to_norm @ m @ to_pixel)[:, :2, :]


def _grid(theta: Tensor, height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``(N, H, W, 2)`` sampling grid of ``theta`` at the ``align_corners=True`` pixel centres.

    Built with elementwise broadcasting rather than ``F.affine_grid``, whose batched matmul could run
    in TF32 on a GPU (when float32 matmul precision is lowered) and move samples by a tenth of a pixel.
    """
    theta = theta.to(device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=device) if width > 1 else theta.new_zeros(1)
    ys = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=device) if height > 1 else theta.new_zeros(1)
    # Last dim is (x, y): the x-term and constant vary along W, the y-term along H.
    along_w = theta[:, None, None, :, 0] * xs[None, None, :, None] + theta[:, None, None, :, 2]  # (N,1,W,2)
    along_h = theta[:, None, None, :, 1] * ys[None, :, None, None]  # (N,H,1,2)
    return along_w + along_h


def warp(images: Tensor, matrices: Tensor) -> Tensor:
    """Warps each image by its matrix with one ``grid_sample`` call.

    Matches ``scipy.ndimage.affine_transform(channel, M[:2, :2], M[:2, 2], order=1, mode='nearest')``
    per channel: bilinear sampling at ``M @ (row, col, 1)``, positions outside the image clamped to the
    edge (``padding_mode='border'``).

    Args:
        images: Floating-point ``(N, C, H, W)`` batch, any memory format, on any device.
        matrices: ``(N, 3, 3)`` output-to-input pixel matrices (from ``keras_matrices``), any device.

    Returns:
        The warped ``(N, C, H, W)`` batch, same dtype and device as ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}")
    n, _, height, width = images.shape
    if matrices.shape != (n, 3, 3):
        raise ValueError(f"matrices must be ({n}, 3, 3), got {tuple(matrices.shape)}")
    theta = _normalized_theta(matrices, height, width)
    grid = _grid(theta, height, width, images.dtype, images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


class BatchTransform:
    """uint8 NHWC batch -> float NCHW batch ready for the model.

    Optional Keras augmentation, then ``x / 255``, then optional ``(x - mean) / std``, all on the
    batch's device. Without augmentation the result is exactly ``x.float() / 255``.

    Args:
        augment: The augmentation, or None for none (validation).
        mean: Per-channel mean subtracted after rescaling, or None.
        std: Per-channel std divided by after the mean, or None.
        channels_last: Return a channels_last-contiguous tensor instead of a contiguous NCHW one.
        seed: Seed of the transform's own CPU generator, used when a call passes none.
    """

    def __init__(
        self,
        augment: KerasAugment | None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        channels_last: bool = False,
        seed: int = 0,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None and std is not None:
            if len(mean) != len(std):
                raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
            if any(s <= 0 for s in std):
                raise ValueError(f"std must be positive, got {std!r}")
        self.augment = augment
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        self.channels_last = channels_last
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(augment={self.augment!r}, mean={self.mean!r}, std={self.std!r}, "
            f"channels_last={self.channels_last}, seed={self.seed})"
        )

    def _mean_std_255(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(255 mean, 255 std)`` as float32 ``(1, C, 1, 1)`` tensors on ``device``, cached."""
        if device not in self._stats:
            mean = torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1) * 255.0
            std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1) * 255.0
            self._stats[device] = (mean.float().to(device), std.float().to(device))
        return self._stats[device]

    def __call__(self, batch_uint8_nhwc: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Transforms one batch.

        Args:
            batch_uint8_nhwc: ``(N, H, W, C)`` uint8 images, on any device.
            generator: Source of the augmentation's randomness; None uses the transform's own
                seeded CPU generator (advancing it).

        Returns:
            ``(N, C, H, W)`` float32 on the batch's device, channels_last-contiguous if asked.
        """
        batch = batch_uint8_nhwc
        if batch.ndim != 4 or batch.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 (N, H, W, C) batch, got {batch.dtype} {tuple(batch.shape)}")
        n, height, width, channels = batch.shape
        if self.mean is not None and len(self.mean) != channels:
            raise ValueError(f"mean/std have {len(self.mean)} channels, the batch has {channels}")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # The NCHW view of an NHWC batch is channels_last-strided, so casting into channels_last is a
        # plain cast and into NCHW a cast + transpose, one pass either way. grid_sample returns
        # contiguous NCHW whatever its input; a warped batch is cast into NCHW, which keeps the CUDA
        # kernel's reads within one channel plane (on CPU the two input layouts time within ~10%).
        cast_fmt = torch.contiguous_format if self.augment is not None else fmt
        x = torch.empty(
            (n, channels, height, width), dtype=torch.float32, device=batch.device, memory_format=cast_fmt
        )
        x.copy_(batch.permute(0, 3, 1, 2))
        if self.augment is not None:
            gen = generator if generator is not None else self.generator
            params = sample_params(self.augment, n, height, width, generator=gen)
            x = warp(x, keras_matrices(params, height, width))
        # Rescale (one pass; normalizing adds one) in place, or fused with the change of memory format.
        out = x if x.is_contiguous(memory_format=fmt) else torch.empty_like(x, memory_format=fmt)
        if self.mean is None:
            torch.div(x, 255, out=out)  # bit-identical to x / 255
        else:
            mean, std = self._mean_std_255(x.device)
            torch.sub(x, mean, out=out).div_(std)  # (x - 255 mean) / (255 std) = (x / 255 - mean) / std
        return out
