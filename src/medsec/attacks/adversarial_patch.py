"""The classic adversarial patch (Brown, Mane, Roy, Abadi & Gilmer, "Adversarial
Patch", NeurIPS 2017 workshop) as the single-patch baseline of SNAP, in the same
harness and at the same coverage.

Threat model: white-box; ``ThreatModel("patch", coverage)``; the attacker replaces ONE
square of area at most ``coverage`` of the image (side floor(sqrt(coverage * H * W)),
random position) with content of ANY colour inside the image bounds (no colour
constraint). Targeted or untargeted.

``adversarial_patch`` optimises one patch per image; ``adversarial_patch_universal``
trains one patch on a fit set and pastes it into unseen images at one fixed random
position, as in the paper's universal setting. Both reuse the SNAP optimiser (Adam lr
0.01, CE on the logits, stop at 0.95 confidence); they differ from SNAP only in the mask
(one square), the colour constraint (none) and, per image, the init (random colours,
as in Brown et al.). Brown et al.'s expectation over random locations, rotations and
scales (for physical robustness) is not modelled: the location is fixed per fit.

The parameters are those of :class:`~medsec.attacks.snap.SNAP` /
:class:`~medsec.attacks.snap_universal.SNAPUniversal`, with the defaults above
(``mask="square"``, ``colour="none"``, per image ``init="random"``).

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> patch = medsec.attacks.create("adversarial_patch", steps=100)
    >>> res = patch(model, x, y, threat=medsec.ThreatModel("patch", 0.05), generator=torch.Generator().manual_seed(0))
    >>> bool((res.x_adv != x).any(dim=1).float().mean(dim=(1, 2)).max() <= 0.05)  # one square of <= 5% of the pixels
    True
"""

from __future__ import annotations

from typing import Any

from medsec.attacks.snap import SNAP
from medsec.attacks.snap_universal import SNAPUniversal
from medsec.masks import MaskGenerator
from medsec.objectives import Objective
from medsec.registry import ATTACKS


@ATTACKS.register("adversarial_patch")
class AdversarialPatch(SNAP):
    """One square patch of any colour per image (Brown et al. 2017).

    Args:
        mask: mask generator name or instance (default ``"square"``: one square at a
            random position).
        mask_params: parameters of the named generator.
        steps: iteration limit (default 500; 0 returns the initial patch).
        optimizer: ``"adam"`` (default) or ``"sign"``.
        lr: step size in input units (default 0.01 for Adam, 1/255 for signed steps).
        colour: ``"none"`` (default: any colour inside the image bounds) or ``"image"``
            (clamp to the image's percentiles, as SNAP).
        percentiles: (low, high) percentiles of the colour range with ``colour="image"``
            (default (5, 95)).
        init: ``"random"`` (uniform colours, as Brown et al.; default) or ``"median"``.
        target_confidence: stop a sample when the adversarial class reaches this
            probability (default 0.95; None: run all steps).
        loss: objective (``"auto"`` = CE for multiclass heads).
        early_stop: also stop a sample once it succeeds.
    """

    name = "adversarial_patch"

    def __init__(
        self,
        *,
        mask: str | MaskGenerator = "square",
        mask_params: dict[str, Any] | None = None,
        steps: int = 500,
        optimizer: str = "adam",
        lr: float | None = None,
        colour: str = "none",
        percentiles: tuple[float, float] = (5.0, 95.0),
        init: str = "random",
        target_confidence: float | None = 0.95,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(mask=mask, mask_params=mask_params, steps=steps, optimizer=optimizer, lr=lr, colour=colour,
                         percentiles=percentiles, init=init, target_confidence=target_confidence, loss=loss,
                         early_stop=early_stop)


@ATTACKS.register("adversarial_patch_universal")
class AdversarialPatchUniversal(SNAPUniversal):
    """One universal square patch of any colour (Brown et al. 2017).

    Args:
        mask: mask generator name or instance (default ``"square"``: one square at a
            random position, drawn once per fit).
        mask_params: parameters of the named generator.
        epochs: passes over the fit set (default 20).
        batch_size: images per step (default 64).
        optimizer: ``"adam"`` (default) or ``"sign"``.
        lr: step size (default 0.01 for Adam, 1/255 for signed steps).
        colour: ``"none"`` (default: any colour inside the image bounds) or ``"dataset"``
            (clamp to the fit set's percentiles, as SNAP).
        percentiles: (low, high) percentiles of the colour range with ``colour="dataset"``
            (default (5, 95)).
        target_confidence: stop when the mean adversarial-class probability reaches it
            (default 0.95; None: all epochs).
        shuffle: a new random visit order each epoch (default True).
        loss: objective (``"auto"`` = CE for multiclass heads).
        early_stop: accepted for the common interface and ignored.
    """

    name = "adversarial_patch_universal"

    def __init__(
        self,
        *,
        mask: str | MaskGenerator = "square",
        mask_params: dict[str, Any] | None = None,
        epochs: int = 20,
        batch_size: int = 64,
        optimizer: str = "adam",
        lr: float | None = None,
        colour: str = "none",
        percentiles: tuple[float, float] = (5.0, 95.0),
        target_confidence: float | None = 0.95,
        shuffle: bool = True,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(mask=mask, mask_params=mask_params, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                         lr=lr, colour=colour, percentiles=percentiles, target_confidence=target_confidence,
                         shuffle=shuffle, loss=loss, early_stop=early_stop)
