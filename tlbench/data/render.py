"""A pure-numpy renderer of synthetic, mini-ImageNet-like images.

Each class is one combination of three attributes: a shape, a colour family (hue) and a surface
texture. There are 5 shapes x 5 hues x 4 textures = 100 combinations, so the 100 classes use every
combination exactly once; each attribute value is shared by 20 or 25 classes and no single attribute
identifies a class. Class k is the k-th triple in a fixed "shell" order (all triples whose largest
attribute index is <= j come before any with a larger one), so even a short prefix of classes mixes
the attributes: the first 8 classes are the 2 x 2 x 2 cube {disc, square} x {red, yellow} x {solid,
horizontal stripes}. The assignment does not depend on `num_classes`: class k looks the same in a
10-class and a 100-class set.

Per image: a low-frequency colour-noise background; two to four distractor shapes (radius 0.05-0.11
of the side, against 0.22-0.34 for the object) drawn from the whole attribute vocabulary (any shape,
hue and texture); the class object on top (random position, size, rotation, hue/saturation/value
jitter, texture phase and period, mild shading); then additive uniform pixel noise (standard
deviation 9 of 255). Stripe orientation is measured in image coordinates (up to +-11 degrees of
jitter), not in the rotated object frame, so horizontal and vertical stripes stay distinct.

Geometry is in fractions of the image side, so any size from 16 px up renders the same scene. Images
are rendered in blocks of 64, vectorised over the block; block b of class k uses its own generator,
seeded by (seed, class_index, b), so classes render independently, in any order or in parallel, and
the first n images of a class do not depend on how many are asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring")
"""The object shapes, by attribute index."""

HUES: tuple[str, ...] = ("red", "yellow", "green", "blue", "magenta")
"""The colour families, by attribute index."""

TEXTURES: tuple[str, ...] = ("solid", "hstripes", "vstripes", "dots")
"""The surface textures, by attribute index (stripes named by the direction they run in)."""

MAX_CLASSES: int = len(SHAPES) * len(HUES) * len(TEXTURES)
"""How many distinct classes the renderer offers (100)."""

_HUE_CENTRES = np.array([0.0, 0.15, 0.35, 0.6, 0.82])  # HSV hue of each colour family, in turns
_HUE_JITTER = 0.03  # +- turns; the closest families are 0.15 apart
_BLOCK = 64  # images per vectorised block (and per generator)
_MAX_DISTRACTORS = 4
_BG_GRIDS = (3, 6)  # background colour noise: a coarse and a finer octave of random colours
_SALT = 0x5EED_1A7E  # keeps these streams apart from other users of (seed, class_index) seeds
_F32 = np.float32


@cache
def _attribute_table() -> tuple[tuple[int, int, int], ...]:
    triples = [
        (shape, hue, texture)
        for shape in range(len(SHAPES))
        for hue in range(len(HUES))
        for texture in range(len(TEXTURES))
    ]
    triples.sort(key=lambda t: (max(t), sum(t), t[2], t[1], t[0]))
    return tuple(triples)


def class_attributes(class_index: int) -> tuple[int, int, int]:
    """The attribute triple of a class.

    Args:
        class_index: The class, in [0, MAX_CLASSES).

    Returns:
        (shape, hue, texture) indices into SHAPES, HUES and TEXTURES.

    Raises:
        ValueError: If class_index is out of range.
    """
    if not 0 <= class_index < MAX_CLASSES:
        raise ValueError(f"class_index must be in [0, {MAX_CLASSES}), got {class_index}")
    return _attribute_table()[class_index]


def class_description(class_index: int) -> str:
    """A readable name for a class, such as 'red disc, hstripes'."""
    shape, hue, texture = class_attributes(class_index)
    return f"{HUES[hue]} {SHAPES[shape]}, {TEXTURES[texture]}"


# --- colours ---------------------------------------------------------------------------------------


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB: (k,) arrays in [0, 1] (hue in turns) -> (k, 3) float32."""
    k = (np.array([5.0, 3.0, 1.0]) + (h % 1.0)[:, None] * 6.0) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (v[:, None] * (1.0 - s[:, None] * ramp)).astype(_F32)


# --- shapes: signed distances in units of the circumradius (negative inside, all fit in r <= 1) ---

_TRI_NORMALS = [
    (float(np.cos(a)), float(np.sin(a))) for a in np.deg2rad([90.0, 210.0, 330.0])
]  # equilateral triangle, inradius 0.5, circumradius 1


def _sdf_disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v) - _F32(0.85)


def _sdf_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) - _F32(0.7)


def _sdf_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    (ax, ay), (bx, by), (cx, cy) = _TRI_NORMALS
    d = np.maximum(u * _F32(ax) + v * _F32(ay), u * _F32(bx) + v * _F32(by))
    np.maximum(d, u * _F32(cx) + v * _F32(cy), out=d)
    return d - _F32(0.5)


def _sdf_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    arm, half_width = _F32(0.95), _F32(0.3)
    return np.minimum(np.maximum(au - arm, av - half_width), np.maximum(au - half_width, av - arm))


def _sdf_ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.sqrt(u * u + v * v) - _F32(0.72)) - _F32(0.22)


_SDFS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _sdf_disc,
    _sdf_square,
    _sdf_triangle,
    _sdf_cross,
    _sdf_ring,
)

# --- textures: pattern weight in [0, 1] (0 = base colour, 1 = dark colour), ~1 px anti-aliasing ---


def _tex_solid(a: np.ndarray, b: np.ndarray, period: np.ndarray) -> np.ndarray:
    return np.zeros(np.broadcast_shapes(a.shape, b.shape), _F32)


def _stripes(t: np.ndarray, period: np.ndarray) -> np.ndarray:
    weight = np.sin(_F32(2 * np.pi) * t)
    weight *= period * _F32(1 / (2 * np.pi))  # slope of about 1 per pixel at the edges
    weight += _F32(0.5)
    return np.clip(weight, 0.0, 1.0, out=weight)


def _tex_hstripes(a: np.ndarray, b: np.ndarray, period: np.ndarray) -> np.ndarray:
    return _stripes(b, period)


def _tex_vstripes(a: np.ndarray, b: np.ndarray, period: np.ndarray) -> np.ndarray:
    return _stripes(a, period)


def _tex_dots(a: np.ndarray, b: np.ndarray, period: np.ndarray) -> np.ndarray:
    fa = a - np.floor(a) - _F32(0.5)
    fb = b - np.floor(b) - _F32(0.5)
    dist = np.sqrt(fa * fa + fb * fb) * period  # pixels to the nearest dot centre
    weight = _F32(0.5) + _F32(0.32) * period - dist
    return np.clip(weight, 0.0, 1.0, out=weight)


_TEXTURE_FNS: tuple[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], ...] = (
    _tex_solid,
    _tex_hstripes,
    _tex_vstripes,
    _tex_dots,
)


# --- per-image parameters ----------------------------------------------------------------------------


class _Shapes(NamedTuple):
    """Parameters of one shape per image (all arrays have the same leading length)."""

    cy: np.ndarray  # centre, pixels
    cx: np.ndarray
    radius: np.ndarray  # circumradius, pixels
    theta: np.ndarray  # shape rotation, radians
    shape: np.ndarray  # index into SHAPES
    texture: np.ndarray  # index into TEXTURES
    phi: np.ndarray  # texture frame rotation, radians (small: orientation is an attribute)
    period: np.ndarray  # texture period, pixels
    phase: np.ndarray  # (k, 2) texture phase, in periods
    base: np.ndarray  # (k, 3) RGB
    dark: np.ndarray  # (k, 3) RGB of the texture's second colour (same hue, darker)

    def take(self, idx: np.ndarray) -> _Shapes:
        """The parameters of the shapes at positions idx."""
        return _Shapes(*(field[idx] for field in self))


def _draw_shapes(
    rng: np.random.Generator,
    count: int,
    size: int,
    radius_range: tuple[float, float],
    shape: np.ndarray,
    hue_family: np.ndarray,
    texture: np.ndarray,
    sat_range: tuple[float, float],
    val_range: tuple[float, float],
    inset: float,
) -> _Shapes:
    """Random placements and colours for `count` shapes; centres keep `inset` radii from the edges."""
    radius = rng.uniform(*radius_range, count) * size
    lo = inset * radius
    cy = lo + rng.uniform(0.0, 1.0, count) * (size - 2 * lo)
    cx = lo + rng.uniform(0.0, 1.0, count) * (size - 2 * lo)
    theta = rng.uniform(0.0, 2 * np.pi, count)
    phi = rng.uniform(-0.2, 0.2, count)
    period = np.maximum(rng.uniform(0.45, 0.6, count) * radius, 2.5)
    phase = rng.uniform(0.0, 1.0, (count, 2))
    hue = _HUE_CENTRES[hue_family] + rng.uniform(-_HUE_JITTER, _HUE_JITTER, count)
    sat = rng.uniform(*sat_range, count)
    val = rng.uniform(*val_range, count)
    dark_val = val * rng.uniform(0.3, 0.45, count)
    return _Shapes(
        cy=cy,
        cx=cx,
        radius=radius,
        theta=theta,
        shape=shape,
        texture=texture,
        phi=phi,
        period=period,
        phase=phase,
        base=_hsv_to_rgb(hue, sat, val),
        dark=_hsv_to_rgb(hue, np.minimum(sat * 1.1, 1.0), dark_val),
    )


# --- rasterising -------------------------------------------------------------------------------------


@cache
def _upsampler(size: int, grid: int) -> np.ndarray:
    """(size, grid) bilinear weights that stretch `grid` nodes over `size` pixel centres."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    weights = np.clip(1.0 - np.abs(pos[:, None] - np.arange(grid)[None, :]), 0.0, 1.0).astype(_F32)
    weights.setflags(write=False)
    return weights


def _background(grids: list[np.ndarray], size: int) -> np.ndarray:
    """Sum of the bilinearly upsampled (m, 3, g, g) colour grids, as (m, 3, size, size) float32."""
    ups = [_upsampler(size, grid.shape[-1]) for grid in grids]
    rows = np.concatenate([grid @ up.T for grid, up in zip(grids, ups, strict=True)], axis=2)
    return np.concatenate(ups, axis=1) @ rows  # columns of every octave at once, then the rows


def _grouped(ids: np.ndarray, fns: tuple[Callable[..., np.ndarray], ...], *args: np.ndarray) -> np.ndarray:
    """Apply fns[ids[i]] to image i's slice of args, one vectorised call per distinct id."""
    groups = np.unique(ids)
    if groups.size == 1:
        return fns[int(groups[0])](*args)
    first = args[0]
    out = None
    for gid in groups:
        sel = ids == gid
        part = fns[int(gid)](*(a[sel] for a in args))
        if out is None:
            shape = np.broadcast_shapes(*(a.shape for a in args))
            out = np.empty((first.shape[0], *shape[1:]), _F32)
        out[sel] = part
    assert out is not None
    return out


def _paint(canvas: np.ndarray, idx: np.ndarray, shapes: _Shapes) -> None:
    """Composite one anti-aliased, textured, shaded shape onto each canvas[idx[i]], in place.

    canvas is channel-first, (m, 3, size, size). Work is confined to a square window around each
    shape (one side length for the whole call), cut out through a sliding-window view.
    """
    size = canvas.shape[-1]
    k = idx.size
    side = min(size, int(np.ceil(2.0 * shapes.radius.max())) + 3)
    y0 = np.clip(np.floor(shapes.cy - side / 2), 0, size - side).astype(np.intp)
    x0 = np.clip(np.floor(shapes.cx - side / 2), 0, size - side).astype(np.intp)
    offsets = np.arange(side) + 0.5
    dy = (y0[:, None] + offsets - shapes.cy[:, None]).astype(_F32)[:, :, None]  # (k, side, 1)
    dx = (x0[:, None] + offsets - shapes.cx[:, None]).astype(_F32)[:, None, :]  # (k, 1, side)

    def col(values: np.ndarray) -> np.ndarray:
        return values.astype(_F32).reshape(k, 1, 1)

    radius = col(shapes.radius)
    cos_t, sin_t = col(np.cos(shapes.theta)), col(np.sin(shapes.theta))
    inv_r = 1 / radius
    u = (dx * cos_t + dy * sin_t) * inv_r  # object frame, circumradius units
    v = (dy * cos_t - dx * sin_t) * inv_r
    alpha = _grouped(shapes.shape, _SDFS, u, v)
    alpha *= -radius  # signed distance in pixels, positive inside
    alpha += _F32(0.5)
    np.clip(alpha, 0.0, 1.0, out=alpha)

    period = col(shapes.period)
    cos_p, sin_p = col(np.cos(shapes.phi)), col(np.sin(shapes.phi))
    a = (dx * cos_p + dy * sin_p) / period + col(shapes.phase[:, 0])  # texture frame, periods
    b = (dy * cos_p - dx * sin_p) / period + col(shapes.phase[:, 1])
    pattern = _grouped(shapes.texture, _TEXTURE_FNS, a, b, period)

    shade = u * u
    shade += v * v
    np.minimum(shade, 1.0, out=shade)
    shade *= _F32(-0.2)
    shade += _F32(1.0)  # mild radial shading, darker towards the rim
    pattern *= shade

    base = shapes.base[:, :, None, None]  # (k, 3, 1, 1)
    colour = shade[:, None] * base  # (k, 3, side, side)
    colour += pattern[:, None] * (shapes.dark[:, :, None, None] - base)

    windows = sliding_window_view(canvas, (side, side), axis=(2, 3), writeable=True)
    region = windows[idx, :, y0, x0]  # (k, 3, side, side) copy
    colour -= region
    colour *= alpha[:, None]
    region += colour
    windows[idx, :, y0, x0] = region


def _render_block(rng: np.random.Generator, attrs: tuple[int, int, int], m: int, size: int) -> np.ndarray:
    """Render the first m of a block of _BLOCK images (all parameters drawn for the full block)."""
    n = _BLOCK
    shape, hue, texture = attrs

    # Background: a muted base colour plus two octaves of random colour noise.
    bg_hsv = rng.uniform((0.0, 0.0, 0.3), (1.0, 0.3, 0.8), (n, 3))
    bg_base = _hsv_to_rgb(bg_hsv[:, 0], bg_hsv[:, 1], bg_hsv[:, 2])
    grids = [
        rng.normal(0.0, sd, (n, 3, g, g)).astype(_F32) for g, sd in zip(_BG_GRIDS, (0.13, 0.07), strict=True)
    ]

    n_distractors = rng.integers(2, _MAX_DISTRACTORS + 1, n)
    distractors = [
        _draw_shapes(
            rng,
            n,
            size,
            radius_range=(0.05, 0.11),
            shape=rng.integers(0, len(SHAPES), n),
            hue_family=rng.integers(0, len(HUES), n),
            texture=rng.integers(0, len(TEXTURES), n),
            sat_range=(0.3, 0.85),
            val_range=(0.45, 0.95),
            inset=1.0,
        )
        for _ in range(_MAX_DISTRACTORS)
    ]
    obj = _draw_shapes(
        rng,
        n,
        size,
        radius_range=(0.22, 0.34),
        shape=np.full(n, shape),
        hue_family=np.full(n, hue),
        texture=np.full(n, texture),
        sat_range=(0.55, 1.0),
        val_range=(0.6, 1.0),
        inset=0.9,
    )

    canvas = _background([grid[:m] for grid in grids], size)  # channel-first (m, 3, size, size)
    canvas += bg_base[:m, :, None, None]
    for slot, dist in enumerate(distractors):
        idx = np.flatnonzero(n_distractors[:m] > slot)
        if idx.size:
            _paint(canvas, idx, dist.take(idx))
    everyone = np.arange(m)
    _paint(canvas, everyone, obj.take(everyone))

    # Uniform integer pixel noise in [-15.5, 15.5] (standard deviation 9.2 of 255). Drawn last, and
    # only for the m images rendered, so a shorter request is a prefix of a longer one.
    noise = rng.integers(0, 256, (m, 3, size, size), dtype=np.uint8)
    np.right_shift(noise, 3, out=noise)
    canvas *= _F32(255.0)
    canvas += noise
    canvas += _F32(0.5 - 15.5)
    np.clip(canvas, 0.0, 255.0, out=canvas)
    return canvas.astype(np.uint8).transpose(0, 2, 3, 1)


def render_class_images(class_index: int, n: int, size: int, seed: int, num_classes: int = 100) -> np.ndarray:
    """Render n synthetic images of one class.

    The result is deterministic in (class_index, n, size, seed) and independent of every other
    class, so classes can be rendered in any order or in parallel. Image i does not depend on n (the
    first n images of a longer request are the same), and class k looks the same whatever
    num_classes is: num_classes only bounds class_index.

    Args:
        class_index: The class, in [0, num_classes).
        n: How many images (0 allowed).
        size: Side of the square images in pixels, at least 16.
        seed: A non-negative integer; use different seeds for different splits.
        num_classes: Size of the class set the caller is building, 2 to MAX_CLASSES.

    Returns:
        A uint8 array of shape (n, size, size, 3), RGB.

    Raises:
        ValueError: If an argument is out of range.
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class_index must be in [0, {num_classes}), got {class_index}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    attrs = class_attributes(class_index)
    out = np.empty((n, size, size, 3), np.uint8)
    for block, start in enumerate(range(0, n, _BLOCK)):
        m = min(_BLOCK, n - start)
        rng = np.random.default_rng([_SALT, seed, class_index, block])
        out[start : start + m] = _render_block(rng, attrs, m, size)
    return out
