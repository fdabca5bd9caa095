"""Perturbation size per sample: L-inf, L2 and L0 of ``x_adv - x``.

L0 counts changed pixels (spatial positions where any channel changed by more than
``tol``), the convention of sparse attacks (Papernot et al. 2016; Croce & Hein 2019).

Example:
    >>> x = torch.zeros(1, 3, 4, 4); xa = x.clone(); xa[0, :, 0, 0] = 0.5
    >>> {k: float(v) for k, v in perturbation_norms(x, xa).items()}
    {'linf': 0.5, 'l2': 0.8660253882408142, 'l0': 1.0}
"""

from __future__ import annotations

import torch

from medsec.registry import METRICS


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, tol: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-sample ``{"linf", "l2", "l0"}`` of the perturbation (float tensors of shape (B,))."""
    d = (x_adv.detach() - x.detach()).flatten(2) if x.dim() > 2 else (x_adv - x).detach()[:, None]
    flat = d.flatten(1)
    linf = flat.abs().amax(dim=1) if flat.shape[1] else torch.zeros(flat.shape[0])
    l2 = flat.norm(dim=1)
    l0 = (d.abs() > tol).any(dim=1).sum(dim=-1).to(flat.dtype) if d.dim() == 3 else (flat.abs() > tol).sum(1)
    return {"linf": linf, "l2": l2, "l0": l0.to(flat.dtype)}


@METRICS.register("linf")
def linf(x: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Mean L-inf norm of the perturbation."""
    return float(perturbation_norms(x, x_adv)["linf"].mean())


@METRICS.register("l2")
def l2(x: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Mean L2 norm of the perturbation."""
    return float(perturbation_norms(x, x_adv)["l2"].mean())


@METRICS.register("l0")
def l0(x: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Mean number of changed pixels."""
    return float(perturbation_norms(x, x_adv)["l0"].mean())
