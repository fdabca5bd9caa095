"""A rendered text patch: a word stamped on the image, a naturalistic trigger for
medical images that often carry burnt-in annotations (a BadNets-style patch whose
pattern is text; Gu et al. 2017 used a sticker, medical scans carry "L"/"R" markers).

Threat model: data poisoning with a visible but plausible trigger: the word is drawn
with Pillow's built-in font (no download; scalable where Pillow has FreeType), in
``color`` on a ``background`` box (or with no box: only the glyph pixels change), at
one of the nine BadNets positions.

Example:
    >>> import torch
    >>> t = TextTrigger(text="L", size=10)
    >>> x = torch.zeros(1, 3, 64, 64)
    >>> p = t.sample_params(x.shape)
    >>> bool(t.apply(x, p).max() > 0)
    True
"""

from __future__ import annotations

import numpy as np
import torch

from medsec.backdoors.triggers.badnets import PLACES, place
from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import InputError
from medsec.registry import TRIGGERS


def render_text(text: str, size: int) -> np.ndarray:
    """A float (h, w) coverage map in [0, 1] of ``text`` drawn at font ``size`` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(text)  # whole pixels (typed as floats)
    img = Image.new("L", (max(1, int(right - left)), max(1, int(bottom - top))), 0)
    ImageDraw.Draw(img).text((-left, -top), text, fill=255, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0


@TRIGGERS.register("text")
class TextTrigger(Trigger):
    """A word rendered with Pillow's built-in font, pasted at a fixed position.

    Args:
        text: the word (default ``"R"``).
        size: the font size in pixels, >= 4 (default 10).
        position: one of the nine BadNets positions (default ``"top-left"``).
        color: the grey level of the glyphs (default 1.0).
        background: the grey level of the box behind the word (default 0.0); None: no box,
            only the glyph pixels change.
        margin: distance of the box from the image border in pixels (default 1).
        bounds: the valid pixel range of the images (default (0, 1)).
    """

    name = "text"
    param_keys = ("patch", "alpha", "top", "left")

    def __init__(self, *, text: str = "R", size: int = 10, position: str = "top-left", color: float = 1.0,
                 background: float | None = 0.0, margin: int = 1, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        if not isinstance(text, str) or not text.strip():
            raise InputError("text must be a non-empty string")
        if int(size) < 4:
            raise InputError(f"size must be >= 4 pixels, got {size}")
        if position not in PLACES:
            raise InputError(f"position must be one of {', '.join(PLACES)}, got {position!r}")
        self.text, self.size, self.position, self.margin = text, int(size), position, int(margin)
        self.color = float(color)
        self.background = None if background is None else float(background)

    def _sample(self, c: int, h: int, w: int, generator: torch.Generator | None) -> Params:
        cover = torch.from_numpy(render_text(self.text, self.size))
        ph, pw = cover.shape
        m = self.margin
        if ph + 2 * m > h or pw + 2 * m > w:
            raise InputError(f"the text {self.text!r} at size {self.size} ({ph}x{pw}px) does not fit a {h}x{w} image")
        top, left = place(self.position, h, w, ph, pw, m)
        alpha = torch.ones_like(cover) if self.background is not None else cover
        bg = self.color if self.background is None else self.background
        patch = (bg + (self.color - bg) * cover).expand(c, ph, pw).clone()
        return {"patch": patch, "alpha": alpha, "top": top, "left": left}

    def _apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        patch, alpha = self._param(params, "patch", x), self._param(params, "alpha", x)
        top, left = int(params["top"]), int(params["left"])
        ph, pw = alpha.shape
        if patch.shape[0] != x.shape[1] or top + ph > x.shape[2] or left + pw > x.shape[3]:
            raise InputError(f"params were sampled for another image shape than {tuple(x.shape[1:])}")
        region = x[:, :, top : top + ph, left : left + pw]
        x[:, :, top : top + ph, left : left + pw] = torch.lerp(region, patch.expand_as(region), alpha)
        return x
