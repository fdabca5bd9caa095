"""Penultimate-layer features of a classifier: the input of its last ``nn.Linear``.

Backdoor detectors that inspect representations (Spectral Signatures, Activation
Clustering, Fine-Pruning) need the features the head sees. medsec takes them with a
forward hook on the last ``nn.Linear`` module of the network (registration order),
which is the classification head of timm, torchvision and medsec's own models; pass
``layer`` to pick another module by name, or ``layer="output"`` to take the model's own
output (an image encoder such as a CLIP-style ``encode_image``: its embedding is the
representation the detectors inspect).
"""

from __future__ import annotations

import torch
from torch import nn

from medsec.errors import InputError


def last_linear(model: nn.Module) -> str:
    """The name of the last ``nn.Linear`` module of ``model``."""
    names: list[str] = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise InputError("the model has no nn.Linear head; pass layer=<module name> to take features from")
    return names[-1]


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, layer: str | None = None, batch_size: int = 512) -> torch.Tensor:
    """(N, D) features entering ``layer`` (default: the last ``nn.Linear``), flattened;
    ``layer="output"``: the model's output (any callable image encoder)."""
    if layer == "output":
        return _outputs(model, x, batch_size)
    name = layer or last_linear(model)
    modules = dict(model.named_modules())
    if name not in modules:
        raise InputError(f"the model has no module named {name!r}")
    grabbed: list[torch.Tensor] = []
    hook = modules[name].register_forward_pre_hook(lambda _m, inp: grabbed.append(inp[0].detach().flatten(1)))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], batch_size):
            model(x[i : i + batch_size].to(next(model.parameters()).device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(grabbed).cpu()


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    device = params[0].device if params else x.device
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        out = [model(x[i : i + batch_size].to(device)).detach().flatten(1).cpu() for i in range(0, x.shape[0], batch_size)]
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return torch.cat(out)
