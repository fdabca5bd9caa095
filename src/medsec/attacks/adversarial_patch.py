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

Args: those of :class:`~medsec.attacks.snap.SNAP` /
:class:`~medsec.attacks.snap_universal.SNAPUniversal`, with the defaults above
(``mask="square"``, ``colour="none"``, per image ``init="random"``).

Example:
    >>> import medsec
    >>> patch = medsec.attacks.create("adversarial_patch", steps=200)
    >>> res = patch(model, x, y, threat=medsec.ThreatModel("patch", 0.05))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from medsec.attacks.snap import SNAP
from medsec.attacks.snap_universal import SNAPUniversal
from medsec.masks import MaskGenerator
from medsec.objectives import Objective
from medsec.registries import ATTACKS


@ATTACKS.register("adversarial_patch")
class AdversarialPatch(SNAP):
    """One square patch of any colour per image (Brown et al. 2017)."""

    name = "adversarial_patch"

    def __init__(
        self,
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
    """One universal square patch of any colour (Brown et al. 2017)."""

    name = "adversarial_patch_universal"

    def __init__(
        self,
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
