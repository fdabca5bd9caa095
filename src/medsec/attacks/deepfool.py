"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate
method to fool deep neural networks", CVPR 2016).

Threat model: white-box, minimum-norm L2 or L-inf, untargeted only (there is no
targeted variant: a targeted threat is refused), inside the image bounds. Each
iteration linearises the decision boundaries around the current point and steps onto
the nearest one: with f_k the boundary function of candidate k (negative while the
label is kept) and w_k its input gradient, the step is
r = (|f_l| + 1e-4) / ||w_l||_2^2 * w_l (L2) or r = (|f_l| + 1e-4) / ||w_l||_1 * sign(w_l)
(L-inf), l = argmin_k |f_k| / ||w_k||_p* (the dual norm). Steps are scaled by
(1 + overshoot), so the final perturbation is (1 + overshoot) times the sum of the steps
as in the original, and the point is clipped to the bounds after every iteration. The
whole batch is attacked at once: per iteration one forward pass and one backward pass
per candidate boundary for all samples still correctly classified (a sample leaves the
batch when it is fooled). As a minimum-norm attack it runs once per sweep; the result of
a call is projected onto the eps-ball. Samples not fooled after ``steps`` iterations are
returned unchanged.

Heads: multiclass heads use f_k = z_k - z_y over the ``num_classes`` - 1 other classes
with the largest clean logits (like the original's top-k classes). Adaptations: a
single-logit binary head has one boundary, f = -(2y - 1) z (i.e. -z for label 1 and z
for label 0), so each step is the closed-form projection onto z = 0; a multi-label head
is fooled by flipping one label, so the candidates are the boundaries
f_k = -(2y_k - 1) z_k of the ``num_classes`` labels with the smallest clean |z_k|, and
each step goes to the nearest linearised one (the label with the smallest |z_k| when the
gradient norms are equal).

Args:
    steps: maximum iterations (default 50).
    overshoot: relative overshoot of the perturbation (default 0.02).
    num_classes: candidate classes (labels, for multi-label heads) considered, clamped
        to the head's size (default 10).

Example:
    >>> import medsec
    >>> df = medsec.attacks.create("deepfool", steps=50, overshoot=0.02)
    >>> res = df(model, x, y, threat=medsec.ThreatModel("l2", 1.0))  # doctest: +SKIP
    >>> res.norms["l2"][res.success].median()  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.errors import InputError
from medsec.registries import ATTACKS


@ATTACKS.register("deepfool")
class DeepFool(Attack):
    """Batched DeepFool (L2 and L-inf) for multiclass, binary and multi-label heads."""

    name = "deepfool"
    segmentation = False  # class-boundary attack: no segmentation variant
    norms = ("l2", "linf")
    supports_targeted = False
    minimum_norm = True

    def __init__(self, steps: int = 50, overshoot: float = 0.02, num_classes: int = 10) -> None:
        super().__init__()
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if not float(overshoot) >= 0:
            raise InputError(f"overshoot must be >= 0, got {overshoot}")
        if int(num_classes) < 2:
            raise InputError(f"num_classes must be >= 2, got {num_classes}")
        self.steps = int(steps)
        self.overshoot = float(overshoot)
        self.num_classes = int(num_classes)

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        n = x.shape[0]
        norm = problem.threat.norm
        x_adv = x.clone()
        active = torch.arange(n, device=x.device)  # samples not fooled yet
        candidates: torch.Tensor | None = None
        steps = 0
        for it in range(self.steps + 1):
            xa = x_adv[active]
            if it == self.steps:  # after the last step: only check which samples are fooled
                logits = problem.logits(xa, active)
                active = active[~problem.success(logits, active)]
                break
            f, w, logits, cand = self._boundaries(problem, xa, active, candidates)
            if candidates is None:
                candidates = cand  # fixed at the clean point, for all samples
            keep = ~problem.success(logits, active)
            if not keep.all():
                active, xa, f, w = active[keep], xa[keep], f[keep], w[keep]
            if active.numel() == 0:
                break
            steps += 1
            x_new = problem.clamp(xa + (1 + self.overshoot) * self._step(f, w, norm))
            x_adv = x_new if active.numel() == n else x_adv.index_copy(0, active, x_new)
        if active.numel():
            x_adv[active] = x[active]  # not fooled: minimum-norm semantics, no perturbation
        return x_adv, steps

    @staticmethod
    def _step(f: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
        """The step onto the nearest linearised boundary: f (A, K), w (A, K, *shape)."""
        flat = w.flatten(2)
        dual = flat.abs().sum(dim=2) if norm == "linf" else flat.norm(dim=2)
        dual = dual.clamp_min(1e-12)
        best = (f.abs() / dual).argmin(dim=1)
        rows = torch.arange(f.shape[0], device=f.device)
        f_l, w_l, d_l = f[rows, best], w[rows, best], dual[rows, best]
        scale = ((f_l.abs() + 1e-4) / d_l).reshape(-1, *([1] * (w_l.dim() - 1)))
        if norm == "linf":
            return scale * w_l.sign()
        return scale * w_l / d_l.reshape(-1, *([1] * (w_l.dim() - 1)))

    def _boundaries(
        self, problem: Problem, x: torch.Tensor, idx: torch.Tensor, candidates: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boundary values f (A, K), their input gradients w (A, K, C, H, W) and the
        logits at x (EOT averages), plus the candidate indices (chosen from these
        logits when ``candidates`` is None)."""
        task = problem.objective.task
        labels = problem.labels[idx]
        f_sum = w_sum = logits_sum = None
        cand = None if candidates is None else candidates[idx]
        for _ in range(problem.eot_samples):
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = problem.model(xg)
                problem.count_queries(idx)
                if cand is None:
                    cand = self._candidates(logits.detach(), labels, task)
                f = self._values(logits, labels, cand, task)
                grads = [
                    torch.autograd.grad(f[:, k].sum(), xg, retain_graph=k < f.shape[1] - 1)[0]
                    for k in range(f.shape[1])
                ]
            w = torch.stack(grads, dim=1)
            f_sum = f.detach() if f_sum is None else f_sum + f.detach()
            w_sum = w if w_sum is None else w_sum + w
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        assert f_sum is not None and w_sum is not None and logits_sum is not None and cand is not None
        k = problem.eot_samples
        if candidates is None:
            full = torch.zeros((problem.labels.shape[0], cand.shape[1]), dtype=cand.dtype, device=cand.device)
            cand = full.index_copy(0, idx, cand)
        return f_sum / k, w_sum / k, logits_sum / k, cand

    def _candidates(self, logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
        """Indices of the candidate boundaries per sample: (B, K)."""
        n = logits.shape[0]
        if task == "binary":
            return torch.zeros((n, 1), dtype=torch.long, device=logits.device)
        if task == "multilabel":
            k = min(self.num_classes, logits.shape[1])
            return logits.abs().topk(k, dim=1, largest=False).indices
        k = min(self.num_classes, logits.shape[1]) - 1
        others = logits.clone()
        others.scatter_(1, labels.long()[:, None], float("-inf"))
        return others.topk(k, dim=1).indices

    @staticmethod
    def _values(logits: torch.Tensor, labels: torch.Tensor, cand: torch.Tensor, task: str) -> torch.Tensor:
        """Boundary functions, negative while the label is kept: (A, K)."""
        if task == "binary":
            z = logits.reshape(logits.shape[0], 1)
            return -(2.0 * labels.to(z.dtype)[:, None] - 1.0) * z
        if task == "multilabel":
            sign = 2.0 * labels.to(logits.dtype).gather(1, cand) - 1.0
            return -sign * logits.gather(1, cand)
        return logits.gather(1, cand) - logits.gather(1, labels.long()[:, None])
