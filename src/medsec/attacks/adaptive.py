"""Adaptive attacks against defences: BPDA and EOT (Athalye, Carlini & Wagner, ICML 2018;
Tramer et al., NeurIPS 2020, "On Adaptive Attacks to Adversarial Example Defenses").

Threat model: white-box attacker who knows the defence. :func:`adaptive` turns any
attack and model into their adaptive versions from what the model declares:

* ``model.differentiable == False`` -> the model's backward pass goes through the
  defence's differentiable approximation (BPDA; straight-through by default);
* ``model.stochastic == True`` -> every loss and gradient is averaged over
  ``eot_samples`` forward passes (EOT).

The runner applies it automatically and reports both the plain and the adaptive number.

Example:
    >>> import medsec, torch
    >>> clf = medsec.models.create("small_cnn", num_classes=4, width=8)
    >>> defended_model = medsec.defenses.Defended(clf, medsec.defenses.create("random_noise", sigma=0.1))
    >>> needs_adaptive(defended_model)  # the noise is stochastic
    True
    >>> attack, model = adaptive(medsec.attacks.create("pgd"), defended_model, eot_samples=10)
    >>> attack.eot_samples  # every loss and gradient is averaged over 10 draws of the noise
    10
"""

from __future__ import annotations

import copy

from torch import nn

from medsec.attacks.base import Attack


def needs_adaptive(model: nn.Module) -> bool:
    """True when the model declares a non-differentiable or stochastic component."""
    return (not getattr(model, "differentiable", True)) or bool(getattr(model, "stochastic", False))


def adaptive(attack: Attack, model: nn.Module, eot_samples: int = 10) -> tuple[Attack, nn.Module]:
    """The (attack, model) pair to use against a defended model (unchanged if not needed)."""
    attack = copy.copy(attack)
    if not getattr(model, "differentiable", True):
        with_bpda = getattr(model, "with_bpda", None)
        if with_bpda is None:
            raise TypeError("the model is not differentiable but offers no with_bpda(); wrap it in medsec.defenses.Defended")
        model = with_bpda()
    if getattr(model, "stochastic", False) and attack.needs_gradients:
        attack.eot_samples = int(eot_samples)
    return attack, model
