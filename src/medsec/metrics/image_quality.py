"""Image-quality metrics of adversarial images: PSNR and SSIM (via torchmetrics).

Example:
    >>> x = torch.rand(2, 3, 28, 28)
    >>> psnr(x, x) == float("inf")
    True
"""

from __future__ import annotations

from typing import cast

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from medsec.registry import METRICS


def psnr_per_sample(x: torch.Tensor, x_adv: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR in dB (inf where the images are identical)."""
    x, x_adv = x.detach().double(), x_adv.detach().double()
    return peak_signal_noise_ratio(
        x_adv, x, data_range=data_range, reduction="none", dim=tuple(range(1, x.dim()))
    ).float()


@METRICS.register("psnr")
def psnr(x: torch.Tensor, x_adv: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean PSNR in dB over samples; inf when every image is unchanged."""
    values = psnr_per_sample(x, x_adv, data_range)
    finite = values[torch.isfinite(values)]
    return float("inf") if finite.numel() == 0 else float(finite.mean())


@METRICS.register("ssim")
def ssim(x: torch.Tensor, x_adv: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window 11, sigma 1.5; smaller for tiny images)."""
    k = min(11, x.shape[-1] - (1 - x.shape[-1] % 2), x.shape[-2] - (1 - x.shape[-2] % 2))
    value = structural_similarity_index_measure(
        x_adv.detach().float(), x.detach().float(), data_range=data_range, kernel_size=max(k, 3)
    )
    # a tensor: torchmetrics' annotation also allows the (value, full image) pair of return_full_image=True
    return float(cast(torch.Tensor, value))
