#!/usr/bin/env python3
"""Procedural 64x64 RGB dataset for the scalewise demo models (no downloads, deterministic per seed).

Ten classes, each with a class-defining property (shape, orientation, layout or dominant colour) and
random size, position, colours (where the class allows), backgrounds (solid, linear or radial soft
gradients) and light pixel noise. Shapes are anti-aliased with a signed-distance coverage
clip(0.5 - d, 0, 1) evaluated at pixel centres.

    from demo_data import CLASS_NAMES, make_dataset
    images, labels = make_dataset(1000, seed=0)   # uint8 (N, 64, 64, 3), int64 (N,)

Run directly to write a contact sheet (one row per class):
    python scripts/demo_data.py --sheet /tmp/demo_sheet.png
"""

import argparse
import zlib
import struct

import numpy as np

IMAGE_SIZE = 64
CLASS_NAMES = [
    "red_disc",
    "green_square",
    "blue_triangle",
    "yellow_ring",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
    "sunset",
    "plus_sign",
    "two_dots",
]
NUM_CLASSES = len(CLASS_NAMES)

_S = IMAGE_SIZE
_YY, _XX = np.mgrid[0:_S, 0:_S].astype(np.float32) + 0.5  # pixel centres


def _cover(sd):
    """Anti-aliased coverage of the region sd < 0 (sd in pixels)."""
    return np.clip(0.5 - sd, 0.0, 1.0)[..., None]


def _hsv(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _muted(rng):
    return _hsv(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.25, 0.95))


def _vivid(rng):
    return _hsv(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def _far(rng, sampler, ref, min_dist=0.45, tries=50):
    """A colour from sampler at RGB distance >= min_dist from every colour in ref."""
    c = sampler(rng)
    for _ in range(tries):
        if all(np.linalg.norm(c - r) >= min_dist for r in ref):
            return c
        c = sampler(rng)
    return c


def _background(rng, avoid=()):
    """Solid, linear-gradient or radial-gradient background; returns (image, its mean colour)."""
    c0 = _far(rng, _muted, avoid, 0.5)
    kind = rng.integers(0, 3)
    if kind == 0:
        img = np.broadcast_to(c0, (_S, _S, 3)).copy()
        return img, c0
    c1 = np.clip(c0 + rng.normal(0, 0.15, 3).astype(np.float32), 0, 1)
    if kind == 1:
        a = rng.uniform(0, 2 * np.pi)
        t = ((_XX - _S / 2) * np.cos(a) + (_YY - _S / 2) * np.sin(a)) / _S + 0.5
    else:
        cx, cy = rng.uniform(0, _S, 2)
        t = np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2) / (_S * 1.2)
    t = np.clip(t, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    return img.astype(np.float32), (c0 + c1) / 2


def _paint(img, cov, colour):
    return img * (1 - cov) + colour * cov


def _jitter(rng, lo, hi):
    return np.array([rng.uniform(a, b) for a, b in zip(lo, hi)], dtype=np.float32)


RED = ((0.8, 0.0, 0.0), (1.0, 0.22, 0.22))
GREEN = ((0.0, 0.55, 0.0), (0.25, 0.9, 0.3))
BLUE = ((0.0, 0.1, 0.7), (0.2, 0.4, 1.0))
YELLOW = ((0.88, 0.8, 0.0), (1.0, 1.0, 0.25))


def _centre(rng, extent):
    lo, hi = extent + 1, _S - extent - 1
    return rng.uniform(lo, hi), rng.uniform(lo, hi)


def draw(cls, rng):
    """One float32 (64, 64, 3) image in [0, 1] of class cls."""
    name = CLASS_NAMES[cls]
    if name == "red_disc":
        fg = _jitter(rng, *RED)
        img, _ = _background(rng, [fg])
        r = rng.uniform(8, 20)
        cx, cy = _centre(rng, r)
        img = _paint(img, _cover(np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2) - r), fg)
    elif name == "green_square":
        fg = _jitter(rng, *GREEN)
        img, _ = _background(rng, [fg])
        s = rng.uniform(7, 18)
        cx, cy = _centre(rng, s)
        img = _paint(img, _cover(np.maximum(np.abs(_XX - cx), np.abs(_YY - cy)) - s), fg)
    elif name == "blue_triangle":
        fg = _jitter(rng, *BLUE)
        img, _ = _background(rng, [fg])
        r = rng.uniform(10, 22)  # circumradius of an upward equilateral triangle
        cx, cy = _centre(rng, r)
        sd = None
        for ang in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            # outward normal pointing down (screen y grows downwards) for the base, etc.
            nx, ny = np.cos(ang), np.sin(ang)
            d = (_XX - cx) * nx + (_YY - cy) * ny - r / 2
            sd = d if sd is None else np.maximum(sd, d)
        img = _paint(img, _cover(sd), fg)
    elif name == "yellow_ring":
        fg = _jitter(rng, *YELLOW)
        img, _ = _background(rng, [fg])
        r = rng.uniform(10, 22)
        w = rng.uniform(2.5, 5.0)
        cx, cy = _centre(rng, r + w / 2)
        img = _paint(img, _cover(np.abs(np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2) - r) - w / 2), fg)
    elif name in ("horizontal_stripes", "vertical_stripes", "checkerboard"):
        c0 = _vivid(rng) if rng.random() < 0.5 else _muted(rng)
        c1 = _far(rng, _vivid, [c0], 0.6)
        # Checkerboard squares of 12-20 px: two or more latent cells each (at 6-12 px, one cell,
        # the small demo VAR did not learn them).
        period = rng.uniform(8, 16) if name != "checkerboard" else rng.uniform(24, 40)
        ph = rng.uniform(0, period, 2)

        def band(coord, p):
            # signed distance to the nearest band edge: negative inside the "on" half-periods
            f = np.mod(coord + p, period) / period
            return (np.abs(f - 0.5) - 0.25) * period

        if name == "horizontal_stripes":
            cov = _cover(band(_YY, ph[0]))
        elif name == "vertical_stripes":
            cov = _cover(band(_XX, ph[0]))
        else:
            a, b = band(_XX, ph[0]), band(_YY, ph[1])
            # XOR of two band patterns, anti-aliased from both edge distances
            ca, cb = np.clip(0.5 - a, 0, 1), np.clip(0.5 - b, 0, 1)
            cov = (ca * (1 - cb) + cb * (1 - ca))[..., None]
        img = np.broadcast_to(c0, (_S, _S, 3)) * (1 - cov) + c1 * cov
    elif name == "sunset":
        horizon = rng.uniform(30, 42)
        sky_top = _jitter(rng, (0.85, 0.25, 0.05), (1.0, 0.5, 0.2))
        sky_low = _jitter(rng, (0.95, 0.6, 0.1), (1.0, 0.85, 0.35))
        sea_top = _jitter(rng, (0.05, 0.15, 0.35), (0.2, 0.3, 0.6))
        sea_low = _jitter(rng, (0.0, 0.02, 0.1), (0.1, 0.12, 0.3))
        t_sky = np.clip(_YY / horizon, 0, 1)[..., None]
        t_sea = np.clip((_YY - horizon) / (_S - horizon), 0, 1)[..., None]
        sky = sky_top * (1 - t_sky) + sky_low * t_sky
        sea = sea_top * (1 - t_sea) + sea_low * t_sea
        img = sea * (1 - _cover(_YY - horizon)) + sky * _cover(_YY - horizon)
        sun_r = rng.uniform(5, 10)
        sx = rng.uniform(12, _S - 12)
        sun = _cover(np.sqrt((_XX - sx) ** 2 + (_YY - horizon) ** 2) - sun_r) * _cover(_YY - horizon)
        img = _paint(img, sun, _jitter(rng, (1.0, 0.9, 0.4), (1.0, 1.0, 0.7)))
    elif name == "plus_sign":
        fg = _vivid(rng)
        img, mean = _background(rng, [fg])
        arm = rng.uniform(12, 24)
        th = rng.uniform(2.5, 5.0)
        cx, cy = _centre(rng, arm)
        dx, dy = np.abs(_XX - cx), np.abs(_YY - cy)
        sd = np.minimum(np.maximum(dx - arm, dy - th), np.maximum(dx - th, dy - arm))
        img = _paint(img, _cover(sd), fg)
    elif name == "two_dots":
        c0 = _vivid(rng)
        c1 = _vivid(rng) if rng.random() < 0.5 else c0
        img, _ = _background(rng, [c0, c1])
        r = rng.uniform(5, 9)
        for _ in range(100):
            p = rng.uniform(r + 1, _S - r - 1, 4)
            if np.hypot(p[0] - p[2], p[1] - p[3]) > 2 * r + 6:
                break
        img = _paint(img, _cover(np.sqrt((_XX - p[0]) ** 2 + (_YY - p[1]) ** 2) - r), c0)
        img = _paint(img, _cover(np.sqrt((_XX - p[2]) ** 2 + (_YY - p[3]) ** 2) - r), c1)
    else:
        raise ValueError(cls)
    img = img + rng.normal(0, rng.uniform(0.0, 0.03), img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def make_dataset(n, seed, labels=None):
    """n images (uint8, N x 64 x 64 x 3) with balanced, shuffled labels, deterministic per seed."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = np.arange(n) % NUM_CLASSES
        rng.shuffle(labels)
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty((len(labels), _S, _S, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        out[i] = np.round(draw(int(c), rng) * 255.0).astype(np.uint8)
    return out, labels


def write_png(path, img_u8):
    """Minimal RGB PNG writer (uint8 H x W x 3)."""
    h, w, _ = img_u8.shape
    raw = b"".join(b"\x00" + img_u8[y].tobytes() for y in range(h))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def grid(images, rows, cols, pad=2):
    """Tile uint8 images (rows*cols, H, W, 3) into one image with white padding."""
    h, w = images.shape[1:3]
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(min(len(images), rows * cols)):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[k]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sheet", default="/tmp/demo_sheet.png")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    labels = np.repeat(np.arange(NUM_CLASSES), args.per_class)
    imgs, _ = make_dataset(len(labels), args.seed, labels)
    write_png(args.sheet, grid(imgs, NUM_CLASSES, args.per_class))
    print(f"wrote {args.sheet}: rows = {CLASS_NAMES}")


if __name__ == "__main__":
    main()
