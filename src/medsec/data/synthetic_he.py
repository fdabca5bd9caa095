"""Synthetic H&E-like patches: benign versus tumour nuclear morphology on stroma, fully offline.

A stand-in for histology tiles so that the demo, the tests and the docs run with no
download. Images are rendered in optical density with the Beer-Lambert stain model of
colour deconvolution: a haematoxylin map (nuclei) and an eosin map (stroma: smooth
noise plus fibrous streaks, with occasional pale lumen-like gaps) are mixed with
per-image jittered stain vectors and stain intensities, so colour alone is a weak cue.

* class 0 ``"benign"``: few (3 to 9) small, round, evenly sized nuclei, moderately
  dark, spread over the patch;
* class 1 ``"tumour"``: more (6 to 15), larger, elongated and irregular nuclei whose
  sizes vary within a patch (pleomorphism), darker, and crowded around one or two
  centres.

Nuclear counts overlap between the classes (6 to 9 nuclei occur in both), so the
amount of haematoxylin (mean colour) separates them only partly; morphology (size,
shape, pleomorphism, crowding) is what a CNN learns. Features after the Nottingham
grading criteria (nuclear pleomorphism; Elston & Ellis, Histopathology 19, 1991).

Reference: stain model and H&E optical-density vectors from A. C. Ruifrok and D. A.
Johnston, "Quantification of histochemical staining by color deconvolution",
Analytical and Quantitative Cytology and Histology 23(4), 2001.

Example:
    >>> import medsec.data
    >>> ds = medsec.data.create("synthetic_he", n=64, size=32, seed=0)
    >>> ds.image_shape, ds.classes, ds.class_counts()
    ((3, 32, 32), ['benign', 'tumour'], {'benign': 32, 'tumour': 32})
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medsec.data.base import ImageDataset
from medsec.errors import DataError
from medsec.registry import DATASETS, suggest

log = logging.getLogger(__name__)

CLASSES = ["benign", "tumour"]
SPLITS = {"train": 0, "test": 1}
MAX_NUCLEI = 15
_CHUNK = 32  # images rendered at once (small enough that the (B, K, S, S) arrays stay in cache)
_GRID = 5  # control points of the smooth stroma noise per side

# Ruifrok & Johnston optical-density vectors (normalised), rows: haematoxylin, eosin
_H = np.array([0.650, 0.704, 0.286])
_E = np.array([0.072, 0.990, 0.105])


def _unit(v: np.ndarray) -> np.ndarray:
    unit: np.ndarray = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return unit


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (B, g, g) control grids to (B, size, size) by two matrix products."""
    g = grid.shape[-1]
    pos = (np.arange(size) + 0.5) / size * (g - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, g - 2)
    frac = pos - lo
    a = np.zeros((size, g))
    a[np.arange(size), lo] = 1 - frac
    a[np.arange(size), lo + 1] += frac
    up: np.ndarray = np.einsum("hi,bij,wj->bhw", a, grid, a, optimize=True)
    return up


def _draw_params(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """All random choices per image and per nucleus, drawn up front (rendering is deterministic)."""
    n, k = len(labels), MAX_NUCLEI
    t = labels.astype(bool)[:, None]  # (n, 1): tumour
    p: dict[str, np.ndarray] = {}
    # nuclei count: benign 3..9, tumour 6..15 (overlap 6..9)
    count = np.where(labels == 1, rng.integers(6, 16, n), rng.integers(3, 10, n))
    active = np.arange(k)[None, :] < count[:, None]
    # positions: benign uniform; tumour crowded around one or two centres
    uniform = rng.uniform(0.08, 0.92, (n, k, 2))
    centres = rng.uniform(0.25, 0.75, (n, 2, 2))
    which = rng.integers(0, 2, (n, k))
    crowd = centres[np.arange(n)[:, None], which] + rng.normal(0, 1, (n, k, 2)) * rng.uniform(0.14, 0.3, (n, 1, 1))
    centre = np.clip(np.where(t[..., None], crowd, uniform), 0.03, 0.97) * 32.0  # in 32-px units
    p["cy"], p["cx"] = centre[..., 0], centre[..., 1]
    # size (radius in units of a 32 px patch): benign small and even; tumour large and pleomorphic
    base = np.where(t, rng.uniform(2.1, 2.9, (n, 1)), rng.uniform(1.5, 2.2, (n, 1)))
    spread = np.where(t, rng.uniform(0.12, 0.3, (n, 1)), 0.06)
    p["radius"] = np.clip(base * np.exp(rng.normal(0, 1, (n, k)) * spread), 1.0, 4.5)
    p["aspect"] = np.where(t, rng.uniform(0.5, 0.95, (n, k)), rng.uniform(0.8, 1.0, (n, k)))
    angle = rng.uniform(0, np.pi, (n, k))
    p["cos"], p["sin"] = np.cos(angle), np.sin(angle)
    # boundary irregularity: harmonics 2 and 3 of the radius
    amp = np.where(t[..., None], rng.uniform(0.03, 0.15, (n, k, 2)), rng.uniform(0.0, 0.05, (n, k, 2)))
    phase = rng.uniform(0, 2 * np.pi, (n, k, 2))
    p["a2c"], p["a2s"] = amp[..., 0] * np.cos(phase[..., 0]), -amp[..., 0] * np.sin(phase[..., 0])
    p["a3c"], p["a3s"] = amp[..., 1] * np.cos(phase[..., 1]), -amp[..., 1] * np.sin(phase[..., 1])
    dark = np.where(t, rng.uniform(0.9, 1.35, (n, k)), rng.uniform(0.75, 1.15, (n, k)))
    p["dark_active"] = dark * active
    # stroma: smooth eosin density, fibre orientation/frequency, lumen gaps
    p["eosin_grid"] = rng.uniform(0.0, 1.0, (n, _GRID, _GRID))
    p["eosin_level"] = rng.uniform(0.25, 0.55, n)
    p["fibre_angle"] = rng.uniform(0, np.pi, n)
    p["fibre_freq"] = rng.uniform(1.5, 3.5, n)  # streaks per patch width
    p["fibre_phase"] = rng.uniform(0, 2 * np.pi, n)
    p["fibre_gain"] = rng.uniform(0.05, 0.25, n)
    p["warp_grid"] = rng.uniform(-2.0, 2.0, (n, _GRID, _GRID))
    p["lumen"] = rng.uniform(0, 1, n) < 0.3
    p["lumen_y"], p["lumen_x"] = rng.uniform(3.0, 29.0, n), rng.uniform(3.0, 29.0, n)
    p["lumen_radius"] = rng.uniform(2.5, 6.0, n)
    # per-image stain variation: jittered vectors and overall intensities
    p["h_vec"] = _unit(np.abs(_H + rng.normal(0, 0.06, (n, 3))))  # optical densities stay >= 0
    p["e_vec"] = _unit(np.abs(_E + rng.normal(0, 0.06, (n, 3))))
    p["h_gain"] = rng.uniform(0.7, 1.3, n)
    p["e_gain"] = rng.uniform(0.7, 1.3, n)
    p["brightness"] = rng.uniform(0.9, 1.0, n)
    return p


def _render(p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Render a chunk of images, float32 (B, 3, size, size) in [0, 1]."""
    f32 = np.float32
    b = p["radius"].shape[0]
    scale = size / 32.0
    coords = ((np.arange(size) + 0.5) / scale).astype(f32)  # pixel centres in 32-px units

    def col(name: str) -> np.ndarray:  # per-nucleus parameter as (B, K, 1, 1)
        return p[name].astype(f32)[..., None, None]

    # --- nuclei (haematoxylin): soft irregular ellipses, max over nuclei. Each nucleus is
    # evaluated only in a W x W pixel window around it (W covers the largest nucleus).
    r = p["radius"]
    reach = r * (1 + np.abs(p["a2c"]) + np.abs(p["a2s"]) + np.abs(p["a3c"]) + np.abs(p["a3s"])) + 2.0 / scale + 0.5
    win = int(min(size, np.ceil(2 * (reach * (p["dark_active"] > 0)).max() * scale) + 2))
    steps = np.arange(win)
    oy = np.clip(np.round(p["cy"] * scale - win / 2), 0, size - win).astype(np.int64)  # (B, K) window origins
    ox = np.clip(np.round(p["cx"] * scale - win / 2), 0, size - win).astype(np.int64)
    py = (oy[..., None] + steps).astype(f32)[..., :, None]  # (B, K, W, 1) pixel rows
    px = (ox[..., None] + steps).astype(f32)[..., None, :]  # (B, K, 1, W) pixel columns
    dy = (py + f32(0.5)) / f32(scale) - col("cy")  # offsets in 32-px units
    dx = (px + f32(0.5)) / f32(scale) - col("cx")
    cos, sin = col("cos"), col("sin")
    rr = col("radius")
    eu = (dx * cos + dy * sin) / rr  # (B, K, W, W)
    ev = (dy * cos - dx * sin) / (rr * col("aspect"))
    rho = np.sqrt(eu * eu + ev * ev) + f32(1e-6)
    c, s = eu / rho, ev / rho  # cos and sin of the polar angle, no arctan2 needed
    c2, s2 = c * c - s * s, 2 * c * s
    c3, s3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
    wobble = 1 + col("a2c") * c2 + col("a2s") * s2 + col("a3c") * c3 + col("a3s") * s3
    # soft edge about 1/2.5 pixel of a 32-px patch wide, so it stays sharp at any size
    z = np.clip((rho / wobble - 1) * rr * f32(2.5 * scale), -20, 20)
    dens = col("dark_active") / (1 + np.exp(z))
    nuclei = np.zeros((b, size, size), dtype=f32)
    bi = np.arange(b)[:, None, None]
    for k in range(dens.shape[1]):
        rows, cols = oy[:, k, None, None] + steps[:, None], ox[:, k, None, None] + steps[None, :]
        nuclei[bi, rows, cols] = np.maximum(nuclei[bi, rows, cols], dens[:, k])
    chromatin = 0.8 + 0.2 * _upsample(rng.uniform(0, 1, (b, 9, 9)), size).astype(f32)
    h_map = nuclei * chromatin

    # --- stroma (eosin): smooth noise + wavy fibrous streaks, pale lumens
    yy, xx = coords[:, None] / 32.0, coords[None, :] / 32.0
    smooth = _upsample(p["eosin_grid"], size).astype(f32)
    warp = _upsample(p["warp_grid"], size).astype(f32)
    ang = p["fibre_angle"].astype(f32)[:, None, None]
    proj = xx * np.cos(ang) + yy * np.sin(ang)
    wave = 2 * np.pi * p["fibre_freq"].astype(f32)[:, None, None] * proj + p["fibre_phase"].astype(f32)[:, None, None]
    streak = np.maximum(np.sin(wave + warp), 0) ** 4
    e_map = p["eosin_level"].astype(f32)[:, None, None] * (0.6 + 0.6 * smooth)
    e_map += p["fibre_gain"].astype(f32)[:, None, None] * streak
    ld = np.sqrt((coords[None, :, None] - p["lumen_y"].astype(f32)[:, None, None]) ** 2
                 + (coords[None, None, :] - p["lumen_x"].astype(f32)[:, None, None]) ** 2)
    lumen = 1 / (1 + np.exp(np.clip((ld - p["lumen_radius"].astype(f32)[:, None, None]) * 1.5, -20, 20)))
    e_map *= 1 - 0.85 * lumen * p["lumen"].astype(f32)[:, None, None]
    e_map *= 1 - 0.5 * np.clip(nuclei, 0, 1)  # nuclei displace stroma

    # --- Beer-Lambert mixing: I = I0 * exp(-(c_H * h + c_E * e))
    hv = (p["h_gain"][:, None] * p["h_vec"]).astype(f32)[:, :, None, None]
    ev_ = (p["e_gain"][:, None] * p["e_vec"]).astype(f32)[:, :, None, None]
    od = hv * h_map[:, None] + ev_ * e_map[:, None]
    img = p["brightness"].astype(f32)[:, None, None, None] * np.exp(f32(-1.6) * od)
    img += f32(0.02) * rng.standard_normal(img.shape, dtype=f32)  # sensor noise
    clipped: np.ndarray = np.clip(img, 0, 1, out=img)
    return clipped


@DATASETS.register("synthetic_he")
def synthetic_he(n: int = 2000, size: int = 32, seed: int = 0, split: str = "train") -> ImageDataset:
    """Generate ``n`` synthetic H&E-like patches, balanced between ``benign`` and ``tumour``.

    Args:
        n: number of images (>= 2); classes are balanced (an odd n gives benign one more).
        size: side in pixels (>= 8); the field of view is fixed, so larger sizes
            render the same tissue at higher resolution.
        seed: the generation seed; the same (seed, split, n, size) gives the same tensors.
        split: ``"train"`` or ``"test"``; each split draws from its own seed stream,
            so the sets differ for the same ``seed``.

    Returns:
        float32 images (n, 3, size, size) in [0, 1], int64 labels (n,).

    Example:
        >>> ds = synthetic_he(n=10, size=16, seed=1, split="test")
        >>> len(ds), ds.image_shape
        (10, (3, 16, 16))
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}.{suggest(str(split), list(SPLITS))} Use one of {', '.join(SPLITS)}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise DataError(f"synthetic_he needs n >= 2 images (one per class), got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise DataError(f"synthetic_he needs an integer size >= 8 pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"synthetic_he needs a non-negative integer seed, got {seed!r}")
    n, size = int(n), int(size)
    rng = np.random.default_rng([int(seed), SPLITS[split]])
    labels = rng.permutation(np.arange(n) % 2)
    params = _draw_params(rng, labels)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(0, n, _CHUNK):
        chunk = {k: v[i : i + _CHUNK] for k, v in params.items()}
        out[i : i + _CHUNK] = _render(chunk, size, rng)
    meta = {"generator": "synthetic_he", "seed": int(seed), "split": split, "n": n, "size": size}
    return ImageDataset(torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64)), CLASSES,
                        name="synthetic_he", meta=meta)
