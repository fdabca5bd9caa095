"""The :class:`Segmenter` task wrapper: normalisation inside, mask logits out.

Like :class:`~medsec.models.classifier.Classifier`, it takes images in the bounds of its
:class:`~medsec.types.InputSpec` (usually [0, 1]) and normalises them itself, so attacks
never see normalised tensors. Output: mask logits (B, C, H, W) at the input size, C = 1
for a binary (sigmoid) head, C = num_classes for a multi-class (softmax) head.

Text-prompted segmenters (CLIPSeg) take a prompt: the wrapped network is then called as
``net(x_normalised, prompt)``; the prompt is an attribute of the wrapper (one text for
every image of a batch), set at construction or with :meth:`Segmenter.set_prompt`, so that
attacks call ``model(x)`` exactly as for any other model and the text is never perturbed
(the paper's image-only threat model).

Example:
    >>> import torch
    >>> net = torch.nn.Conv2d(3, 1, 3, padding=1)
    >>> seg = Segmenter(net, InputSpec(channels=3), num_classes=2)
    >>> seg(torch.rand(2, 3, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsec.errors import InputError
from medsec.models.classifier import register_normalization
from medsec.types import InputSpec


class Segmenter(nn.Module):
    """Wraps a network mapping normalised images (and optionally a prompt) to mask logits.

    Args:
        net: module taking normalised (B, C, H, W) images (and ``prompt`` when
            ``prompted``) and returning logits (B, K, h, w) or, for one channel, (B, h, w).
            Outputs at another resolution are resized bilinearly to the input size.
        spec: the input contract (channels, bounds, mean, std).
        num_classes: 2 for a binary one-logit (sigmoid) head, else the number of classes
            (softmax over K = num_classes channels).
        prompt: default text prompt (text-prompted networks only).
        prompted: whether ``net`` takes a prompt.
        classes: optional class names (default background, foreground).
        arch: optional ``{"name", "params"}`` that rebuilds the network from the model registry.

    Raises:
        InputError: a prompt for a network that takes none, a prompted network without one,
            or an output whose channel count does not match ``num_classes``.
    """

    task = "segmentation"
    _mean: torch.Tensor  # (1, C, 1, 1) buffers of register_normalization
    _std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        spec: InputSpec,
        num_classes: int = 2,
        prompt: str | None = None,
        prompted: bool = False,
        classes: list[str] | None = None,
        arch: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise InputError(f"num_classes must be >= 2 (2 = binary mask with one logit), got {num_classes}")
        if prompt is not None and not prompted:
            raise InputError("a prompt was given but the network takes no text; drop prompt or use a prompted model")
        self.net = net
        self.spec = spec
        self.num_classes = int(num_classes)
        self.prompted = bool(prompted)
        self.prompt = prompt
        self.classes = list(classes) if classes is not None else (
            ["background", "foreground"] if num_classes == 2 else [str(i) for i in range(num_classes)])
        self.arch = arch or {}
        register_normalization(self, spec)

    @property
    def out_channels(self) -> int:
        return 1 if self.num_classes == 2 else self.num_classes

    def set_prompt(self, prompt: str) -> Segmenter:
        """Set the text prompt used by every later call (prompted networks only)."""
        if not self.prompted:
            raise InputError("this segmenter takes no text prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"prompt must be a non-empty string, got {prompt!r}")
        self.prompt = prompt
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the spec's bounds -> the network's normalised input, (x - mean) / std."""
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`: z * std + mean (normalised tensors back to pixels)."""
        return z * self._std.to(z.dtype) + self._mean.to(z.dtype)

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Mask logits of already normalised images (the paper-mode attack space)."""
        out: torch.Tensor
        if self.prompted:
            if self.prompt is None:
                raise InputError("this segmenter needs a text prompt: Segmenter.set_prompt('polyp') or prompt=...")
            out = self.net(z, self.prompt)
        else:
            out = self.net(z)
        if isinstance(out, dict) or hasattr(out, "logits"):  # HF / torchvision style outputs
            out = out["out"] if isinstance(out, dict) and "out" in out else out.logits
        if out.dim() == 3:
            out = out[:, None]
        if out.dim() != 4:
            raise InputError(f"the segmentation network returned shape {tuple(out.shape)}; expected (B, K, H, W)")
        if out.shape[1] != self.out_channels:
            raise InputError(
                f"the network returned {out.shape[1]} channels but num_classes={self.num_classes} needs "
                f"{self.out_channels} (1 for binary)"
            )
        if tuple(out.shape[-2:]) != tuple(z.shape[-2:]):
            out = F.interpolate(out, size=z.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(self.normalize(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class masks (B, H, W)."""
        from medsec.tasks import predict_mask

        return predict_mask(self(x))
