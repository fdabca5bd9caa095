"""Speed options for attacking a model: autocast (bf16/fp16), channels_last, torch.compile.

:class:`Accelerated` wraps any model with the classifier contract and keeps it: inputs
stay float32 in [0, 1] and outputs come back as float32 logits, so every attack runs
unchanged. Mixed precision changes the numbers slightly; benchmarks report robust
accuracy next to time so the trade-off is visible.

Example:
    >>> import medsec.models
    >>> model = medsec.models.create("small_cnn", num_classes=8).eval()
    >>> fast = accelerate(model, precision="bf16", channels_last=True)
    >>> fast(torch.rand(2, 3, 28, 28)).dtype
    torch.float32
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medsec.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Accelerated(nn.Module):
    """``model`` run under autocast / channels_last / torch.compile; float32 logits out
    (https://pytorch.org/docs/stable/amp.html, https://pytorch.org/tutorials/intermediate/memory_format_tutorial.html).

    Threat model: unchanged from ``model``'s (a speed wrapper; inputs and outputs keep its contract).

    Args:
        model: a model with the classifier contract.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        channels_last: run convolutions in channels-last memory format.
        compile: wrap the forward in ``torch.compile``.
    """

    _forward: Callable[[torch.Tensor], torch.Tensor]  # the model, or its compiled forward (not a submodule)

    def __init__(self, model: nn.Module, *, precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.precision = precision
        self.channels_last = bool(channels_last)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        object.__setattr__(self, "_forward", torch.compile(model) if compile else model)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self._forward(x)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = self._forward(x)
        return out.float()


def accelerate(model: nn.Module, precision: str = "fp32", channels_last: bool = False, compile: bool = False) -> nn.Module:
    """``model`` itself when nothing is asked, else an :class:`Accelerated` wrapper."""
    if precision == "fp32" and not channels_last and not compile:
        return model
    return Accelerated(model, precision=precision, channels_last=channels_last, compile=compile)
