"""The trigger interface every backdoor trigger implements.

A trigger is split into ``sample_params(shape, generator)`` (everything random about
it, drawn once and recorded) and ``apply(x, params)`` (a deterministic function of the
images and those parameters), so a poisoned dataset can be rebuilt exactly from the
seed, and the same trigger is stamped on training and test images. ``apply`` never
mutates its input and keeps the result inside the image bounds (GUIDE section 3).

Threat model of all triggers: the attacker controls the pixels of the images it
poisons at training time and of the images it wants misclassified at test time; it
does not control the model's weights (data poisoning) unless a training mode says so.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from medsec.errors import InputError
from medsec.validation import check_images

Params = dict[str, Any]


def image_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
    """(C, H, W) from an image shape (C, H, W) or a batch shape (B, C, H, W)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or any(s < 1 for s in shape):
        raise InputError(f"a trigger needs an image shape (C, H, W) or (B, C, H, W), got {shape}")
    return shape[-3], shape[-2], shape[-1]


class Trigger:
    """Base class of backdoor triggers.

    Subclasses implement :meth:`sample_params` and :meth:`_apply`; :meth:`apply` checks
    the images, calls ``_apply`` on a copy and clamps to ``bounds``.

    Args:
        bounds: the valid pixel range of the images (default [0, 1]).

    The parameters are keyword-only, here and in every trigger.
    """

    name: ClassVar[str] = "trigger"
    param_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise InputError(f"bounds must satisfy low < high, got {bounds}")
        self.bounds = (lo, hi)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    def config(self) -> dict[str, Any]:
        """The constructor parameters (for results.json)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def sample_params(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None) -> Params:
        """Draw the trigger's random parts for images of ``shape`` ((C, H, W) or (B, C, H, W)).

        The result records the image shape it was drawn for; :meth:`apply` refuses
        images of another shape (a patch position or warp field drawn for 28x28 images
        would silently land in the wrong place on 32x32 ones).
        """
        c, h, w = image_shape(shape)
        return {**self._sample(c, h, w, generator), "shape": (c, h, w)}

    def _sample(self, c: int, h: int, w: int, generator: torch.Generator | None) -> Params:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Stamp the trigger on images ``x`` (B, C, H, W) in ``bounds``; returns a new tensor."""
        check_images(x, name="images")
        lo, hi = self.bounds
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise InputError(f"images have values outside the trigger's bounds [{lo:g}, {hi:g}]; pass un-normalised images")
        if not isinstance(params, dict):
            raise InputError(f"params must be the dict returned by sample_params, got {type(params).__name__}")
        missing = [k for k in self.param_keys if k not in params]
        if missing:
            raise InputError(f"params lack {', '.join(missing)}; pass the dict returned by this trigger's sample_params")
        if "shape" in params and tuple(params["shape"]) != tuple(x.shape[1:]):
            raise InputError(f"params were drawn for images of shape {tuple(params['shape'])}, not {tuple(x.shape[1:])}; "
                             "call sample_params with this shape")
        out = self._apply(x.detach().clone(), params)
        return out.clamp(lo, hi)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample_params(x.shape, generator))

    def _apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _param(params: Params, key: str, x: torch.Tensor) -> torch.Tensor:
        if key not in params:
            raise InputError(f"params lack {key!r}; pass the dict returned by this trigger's sample_params")
        return torch.as_tensor(params[key]).to(device=x.device, dtype=x.dtype)
