"""Universal perturbation by stochastic gradient ascent on one shared delta (Shafahi,
Najibi, Xu, Dickerson, Davis & Goldstein, AAAI 2020, "Universal adversarial training",
Algorithm 1 without the model update).

Threat model: white-box; ONE perturbation delta, shared by every image, in the L-inf or
L2 ball of radius eps, added as clamp(x + delta) inside the image bounds. Untargeted:
maximise the mean objective loss over the fit set; targeted (``ThreatModel(...,
targeted=True)`` with target labels, e.g. one class for all points): maximise the
objective's targeted loss, i.e. push every image towards its target.

Each epoch visits the fit set in mini-batches (in a random order from the generator);
per mini-batch, g = mean_i grad_delta min(loss_i(clamp(x_i + delta)), loss_clamp) and
delta <- P_eps(delta + alpha * dir(g)) with dir = sign (L-inf) or g / ||g||_2 (L2).
The gradient flows through the clamp (zero where x + delta is outside the bounds). The
clamp on the loss (``loss_clamp``, Shafahi et al.'s clipped loss, e.g. 10 for CE) stops
points that are already fooled by a wide margin from dominating the mean gradient; it
applies to the objective's value as maximised (for targeted CE that is -CE(target)).

Step size: the default alpha = eps / 10 (L-inf and L2) lets the perturbation cross the
ball (2 eps) in 20 steps, so even the 10 updates of a normal call on one small batch
reach its boundary. Measured on BloodMNIST (small CNN, L-inf 8/255, 1000 fit images,
10 epochs of 128 = 80 updates, 500 test images): test accuracy 95.4% -> 38.6% with
eps / 10, 38.4% with eps / 4 and 59.6% with eps / 40 (not converged); with equal
strength the smaller step averages more mini-batch gradients per unit of movement.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(24, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> (x_train, y_train), (x_test, y_test) = (x[:16], y[:16]), (x[16:], y[16:])
    >>> sgd = medsec.attacks.create("uap_sgd", epochs=5, batch_size=8, loss_clamp=10.0)
    >>> threat = medsec.ThreatModel("linf", 8 / 255)
    >>> delta = sgd.fit(model, x_train, y_train, threat, generator=torch.Generator().manual_seed(0))
    >>> robust = (model(sgd.apply(x_test, delta)).argmax(1) == y_test).float().mean()
    >>> # targeted: everything towards class 3
    >>> t3 = medsec.ThreatModel("linf", 8 / 255, targeted=True)
    >>> delta3 = sgd.fit(model, x_train, y_train, t3, generator=torch.Generator().manual_seed(0), target=3)
    >>> bool((model(sgd.apply(x_test, delta3)).argmax(1) == 3).all())
    True
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Problem
from medsec.attacks.projection import project, random_init, steepest_step
from medsec.attacks.uap import UniversalAttack
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS
from medsec.validation import check_positive_int


@ATTACKS.register("uap_sgd")
class UAPSGD(UniversalAttack):
    """Universal perturbation by signed (L-inf) or normalised (L2) SGD on a shared delta.

    Args:
        epochs: passes over the fit set (default 10).
        step_size: alpha in input units (default eps / 10).
        batch_size: images per gradient step (default 128).
        loss_clamp: clamp each point's loss at this value before averaging (default None:
            no clamp).
        random_init: start at a uniform random point of the ball (from the generator)
            instead of zeros (default False).
        shuffle: a new random visit order each epoch (default True).
        loss: objective (``"auto"``, ``"ce"``, ``"margin"``, ``"bce"`` or an Objective).
        early_stop: accepted for the common interface and ignored.
    """

    name = "uap_sgd"
    supports_targeted = True
    stochastic = True  # with the default shuffle; instances say exactly

    def __init__(
        self,
        *,
        epochs: int = 10,
        step_size: float | None = None,
        batch_size: int = 128,
        loss_clamp: float | None = None,
        random_init: bool = False,
        shuffle: bool = True,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        if step_size is not None and not float(step_size) > 0:
            raise InputError(f"step_size must be > 0, got {step_size}")
        if loss_clamp is not None and not torch.isfinite(torch.tensor(float(loss_clamp))):
            raise InputError(f"loss_clamp must be a finite number or None, got {loss_clamp}")
        self.epochs = check_positive_int("epochs", epochs)
        self.step_size = None if step_size is None else float(step_size)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.loss_clamp = None if loss_clamp is None else float(loss_clamp)
        self.random_init = bool(random_init)
        self.shuffle = bool(shuffle)
        self.stochastic = self.shuffle or self.random_init

    def _fit(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        norm, eps = problem.threat.norm, problem.threat.eps
        lo, hi = problem.bounds
        alpha = self.step_size if self.step_size is not None else eps / 10
        n = x.shape[0]
        delta = random_init(x[:1], norm, eps, generator) if self.random_init else torch.zeros_like(x[:1])
        steps = 0
        for _ in range(self.epochs):
            order = self._order(n, self.shuffle, generator, x.device)
            for s in range(0, n, self.batch_size):
                idx = order[s : s + self.batch_size]
                raw = x[idx] + delta
                loss, grad, _ = problem.loss_and_grad(raw.clamp(lo, hi), idx)
                weight = (raw >= lo) & (raw <= hi)  # d clamp / d delta
                if self.loss_clamp is not None:
                    weight = weight & (loss <= self.loss_clamp).reshape(-1, *([1] * (x.dim() - 1)))
                g = (grad * weight).sum(dim=0, keepdim=True) / idx.numel()
                delta = project(delta + alpha * steepest_step(g, norm), norm, eps)
                steps += 1
        return delta, steps
