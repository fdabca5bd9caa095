"""Randomized smoothing with a certified L2 radius (Cohen, Rosenfeld & Kolter, ICML 2019,
"Certified Adversarial Robustness via Randomized Smoothing").

Threat model: L2-bounded evasion against the *smoothed* classifier
g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c). If the top class has probability at
least p_A > 1/2 under the noise, g is constant on the L2 ball of radius
R = sigma * Phi^-1(p_A) (the paper's Theorem 1 in its one-class form). medsec follows
the paper's CERTIFY and PREDICT procedures: n0 noisy samples select the class, n
further samples give a one-sided Clopper-Pearson lower bound of p_A at confidence
1 - alpha; the smoothed classifier abstains (class -1, radius 0) when the bound is
below 1/2. Noise is added in the model's input space ([0, 1] pixels, normalisation
inside the model) and is not clamped (clamping would void the guarantee).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any classifier module
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)
    >>> smooth = SmoothedClassifier(model, sigma=0.25)
    >>> pred, radius = smooth.certify(x, n0=100, n=1000, alpha=0.001, generator=torch.Generator().manual_seed(0))
    >>> curve = certified_accuracy_curve(pred, radius, y, [0.0, 0.25, 0.5])  # non-increasing in the radius
    >>> curve == sorted(curve, reverse=True)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from medsec.errors import InputError
from medsec.validation import check_images

ABSTAIN = -1


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion."""
    if not 0 <= successes <= trials or trials < 1:
        raise InputError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """sigma * Phi^-1(p_lower), or 0 when p_lower <= 1/2 (no certificate)."""
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


class SmoothedClassifier:
    """The Gaussian-smoothed version of a classifier, with CERTIFY and PREDICT.

    Args:
        model: a multiclass classifier returning logits (medsec's Classifier or any module).
        sigma: noise standard deviation in input units.
        batch_size: noisy samples per forward pass.
    """

    def __init__(self, model: nn.Module, sigma: float, batch_size: int = 500) -> None:
        if not float(sigma) > 0:
            raise InputError(f"sigma must be > 0, got {sigma}")
        if getattr(model, "task", "multiclass") != "multiclass":
            raise InputError("randomized smoothing as implemented here needs a multiclass head")
        self.model, self.sigma, self.batch_size = model, float(sigma), int(batch_size)

    @torch.no_grad()
    def counts(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class counts (B, K) of the base classifier over ``n`` noisy copies of each image."""
        check_images(x)
        if int(n) < 1:
            raise InputError(f"n must be >= 1, got {n}")
        was_training = self.model.training
        self.model.eval()
        try:
            out = None
            for i in range(x.shape[0]):
                left = int(n)
                row = None
                while left > 0:
                    b = min(left, self.batch_size)
                    noise = torch.randn((b, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
                    logits = self.model(x[i : i + 1] + self.sigma * noise)
                    c = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
                    row = c if row is None else row + c
                    left -= b
                assert row is not None
                out = row[None] if out is None else torch.cat([out, row[None]])
        finally:
            self.model.train(was_training)
        assert out is not None
        return out.cpu()

    def certify(self, x: torch.Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CERTIFY: per image the smoothed prediction (or -1 = abstain) and its certified L2 radius."""
        if not 0 < float(alpha) < 0.5:
            raise InputError(f"alpha must be in (0, 0.5), got {alpha}")
        top = self.counts(x, n0, generator).argmax(1)
        counts = self.counts(x, n, generator)
        preds, radii = [], []
        for i in range(x.shape[0]):
            p_low = lower_confidence_bound(int(counts[i, top[i]]), int(n), float(alpha))
            ok = p_low > 0.5
            preds.append(int(top[i]) if ok else ABSTAIN)
            radii.append(certified_radius(p_low, self.sigma) if ok else 0.0)
        return torch.tensor(preds), torch.tensor(radii)

    def predict(self, x: torch.Tensor, n: int = 1000, alpha: float = 0.001,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """PREDICT: the smoothed class, or -1 when the top two counts are not separated
        by a two-sided binomial test at level alpha."""
        counts = self.counts(x, n, generator)
        out = []
        for row in counts:
            top2 = row.topk(2)
            na, nb = int(top2.values[0]), int(top2.values[1])
            p = binomtest(na, na + nb, 0.5).pvalue if na + nb > 0 else 1.0
            out.append(int(top2.indices[0]) if p <= alpha else ABSTAIN)
        return torch.tensor(out)


def certified_accuracy_curve(pred: torch.Tensor, radius: torch.Tensor, labels: torch.Tensor,
                             radii: Sequence[float]) -> list[float]:
    """Fraction of images certified correct at each radius r (correct and radius >= r).

    Non-increasing in r by construction: the set certified at a larger radius is a subset.
    """
    if not (pred.shape == radius.shape == labels.shape) or pred.dim() != 1:
        raise InputError("pred, radius and labels must be 1-d tensors of one length")
    correct = pred == labels
    return [float((correct & (radius >= r)).float().mean()) for r in radii]
