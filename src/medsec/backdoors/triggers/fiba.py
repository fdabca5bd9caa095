"""FIBA: a frequency-injection trigger (Feng et al., "FIBA: Frequency-Injection based
Backdoor Attack in Medical Image Analysis", CVPR 2022).

Threat model: data poisoning with a trigger image blended into the *amplitude* spectrum
of each image's low frequencies while its phase spectrum is kept, so the image content
(which the phase carries) survives and the trigger is hard to see. Per channel, with
A and phi the centred (fftshift) amplitude and phase of x and A_t the amplitude of the
trigger image, inside the centred window of half-size b = floor(beta * min(H, W)):
A' = (1 - alpha) A + alpha A_t (A' = A outside), and x' = real(IFFT(A' e^{i phi})).
The paper's defaults: beta = 0.1, alpha = 0.15 (BadMatch uses beta 0.2, alpha 0.1).

The trigger image is a tensor (C, H, W) given as ``pattern`` (resized to the input) or,
by default, uniform noise drawn once from the generator.

Example:
    >>> import torch
    >>> t = FIBA(beta=0.1, alpha=0.15)
    >>> x = torch.rand(2, 3, 28, 28) * 0.5 + 0.25
    >>> p = t.sample_params(x.shape, torch.Generator().manual_seed(0))
    >>> t.apply(x, p).shape
    torch.Size([2, 3, 28, 28])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import InputError
from medsec.registry import TRIGGERS


@TRIGGERS.register("fiba")
class FIBA(Trigger):
    """Low-frequency amplitude blending with a trigger image; phase kept.

    Args:
        beta: half-size of the centred low-frequency window as a fraction of min(H, W),
            in (0, 0.5] (default 0.1, the paper's).
        alpha: the amplitude mixing ratio, in (0, 1] (default 0.15, the paper's).
        pattern: ``"random"`` (a uniform-noise trigger image drawn once from the generator,
            default) or a trigger image tensor (C, H, W), resized to the input size.
        bounds: the valid pixel range of the images (default (0, 1)).
    """

    name = "fiba"
    param_keys = ("trigger_amplitude", "window")

    def __init__(self, *, beta: float = 0.1, alpha: float = 0.15, pattern: str | torch.Tensor = "random",
                 bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        if not 0.0 < float(beta) <= 0.5:
            raise InputError(f"beta (window size as a fraction of the image) must be in (0, 0.5], got {beta}")
        if not 0.0 < float(alpha) <= 1.0:
            raise InputError(f"alpha (mixing ratio) must be in (0, 1], got {alpha}")
        if isinstance(pattern, str) and pattern != "random":
            raise InputError(f"pattern must be 'random' or a trigger image tensor (C, H, W), got {pattern!r}")
        self.beta, self.alpha = float(beta), float(alpha)
        self.pattern = pattern if isinstance(pattern, str) else "image"
        self._image = None if isinstance(pattern, str) else torch.as_tensor(pattern, dtype=torch.float32)

    def _sample(self, c: int, h: int, w: int, generator: torch.Generator | None) -> Params:
        lo, hi = self.bounds
        if self._image is None:
            img = lo + (hi - lo) * torch.rand((c, h, w), generator=generator)
        else:
            img = self._image if self._image.dim() == 3 else self._image[None]
            if img.shape[0] not in (1, c):
                raise InputError(f"pattern has {img.shape[0]} channels; the images have {c}")
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0].expand(c, h, w)
        amp = torch.fft.fftshift(torch.fft.fft2(img.double()), dim=(-2, -1)).abs()
        return {"trigger_amplitude": amp.contiguous(), "window": self.window(h, w)}

    def window(self, h: int, w: int) -> int:
        """The half-size b of the centred low-frequency window."""
        return int(self.beta * min(h, w))

    def _apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return self.blend(x, params).to(x.dtype)

    def blend(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """The unclamped real image with the blended amplitude and the original phase."""
        amp_t = torch.as_tensor(params["trigger_amplitude"]).to(device=x.device, dtype=torch.float64)
        if tuple(amp_t.shape) != tuple(x.shape[1:]):
            raise InputError(f"params were sampled for shape {tuple(amp_t.shape)}, images are {tuple(x.shape[1:])}")
        h, w = x.shape[-2:]
        b = int(params["window"])
        spec = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
        amp, phase = spec.abs(), spec.angle()
        ch, cw = h // 2, w // 2
        win = (slice(None), slice(None), slice(ch - b, ch + b + 1), slice(cw - b, cw + b + 1))
        amp = amp.clone()
        amp[win] = (1 - self.alpha) * amp[win] + self.alpha * amp_t[None][win]
        out = torch.fft.ifft2(torch.fft.ifftshift(torch.polar(amp, phase), dim=(-2, -1)))
        real: torch.Tensor = out.real
        return real
