"""Square Attack, a score-based black-box attack by random search (Andriushchenko,
Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search").

Threat model: black-box with scores: the attacker sees the model's outputs (logits)
for its queries and nothing else (no gradients); L-inf or L2 ball of radius eps around
x, inside the image bounds; untargeted or targeted.

The attack keeps one point per sample and proposes a change of a random square of side
s at each iteration; the proposal is kept when it raises the loss (or succeeds). The
square covers a fraction p of the image, p starts at ``p_init`` and halves after
10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 iterations of a 10 000-query budget
(the schedule is rescaled to ``queries``).

* L-inf: the start is x + eps * vertical stripes of random sign (per channel and
  column); a proposal sets the square to x +- eps with one random sign per channel
  (a sign that would change nothing is redrawn), s = round(sqrt(p * H * W)).
* L2: the start tiles the image with the paper's meta-pattern (two halves of
  concentric rectangles of opposite sign, random orientation and per-channel sign) and
  scales it to norm eps; a proposal moves the mass of a second random square into the
  first one, adds a new meta-pattern there and rescales to norm eps (s odd, >= 3).

Samples are processed as a batch with one random square per sample. A sample that is
broken is not queried again (a black-box attacker stops when done), whatever
``early_stop`` says. The first query of every sample is the clean image (a sample the
model already gets wrong is returned unchanged); ``queries`` bounds the model queries
of the search per sample, the clean one included (the result's ``queries`` adds one
for the final evaluation).

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> square = medsec.attacks.create("square", queries=200)
    >>> res = square(model, x, y, threat=medsec.ThreatModel("linf", 8 / 255), generator=torch.Generator().manual_seed(0))
    >>> res.queries.max() <= 201
    tensor(True)
"""

from __future__ import annotations

import math

import torch

from medsec.attacks.base import Attack, Problem
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS

# p halves after these iterations of a 10 000-query run (Andriushchenko et al.)
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_MAX_REDRAWS = 32


def p_selection(p_init: float, iteration: int, queries: int) -> float:
    """The square-size fraction p at ``iteration`` of a ``queries``-query run."""
    it = int(iteration / queries * 10000)
    p: float = p_init / 2 ** sum(it > t for t in P_SCHEDULE)
    return p


def _rectangles(a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
    """Concentric rectangles centred on an a x b grid; the k-th ring from the centre
    weighs 1 / (k + 1)^2 more (summed over the rectangles that contain it); unit norm."""
    delta = torch.zeros(a, b, dtype=dtype)
    r0, c0 = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        delta[max(r0 - k, 0) : min(r0 + k + 1, a), max(c0 - k, 0) : min(c0 + k + 1, b)] += 1.0 / (k + 1) ** 2
    unit: torch.Tensor = delta / delta.norm().clamp_min(1e-12)
    return unit


def meta_pattern(s: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The L2 meta-pattern of side s: rectangles on the top half, minus rectangles on the
    bottom half, unit L2 norm (its transpose is the other orientation)."""
    eta = torch.zeros(s, s, dtype=dtype)
    eta[: s // 2] = _rectangles(s // 2, s, dtype)
    eta[s // 2 :] = -_rectangles(s - s // 2, s, dtype)
    unit: torch.Tensor = eta / eta.norm().clamp_min(1e-12)
    return unit


def _window_masks(
    m: int, h: int, w: int, s: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """One random s x s square per sample, as a bool mask (m, 1, h, w)."""
    dev = generator.device if generator is not None else device
    vh = torch.randint(0, h - s + 1, (m,), generator=generator, device=dev).to(device)
    vw = torch.randint(0, w - s + 1, (m,), generator=generator, device=dev).to(device)
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_h = (rows >= vh[:, None]) & (rows < vh[:, None] + s)
    in_w = (cols >= vw[:, None]) & (cols < vw[:, None] + s)
    return in_h[:, None, :, None] & in_w[:, None, None, :]


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform random +-1 of ``like``'s dtype and device."""
    dev = generator.device if generator is not None else like.device
    bits = torch.randint(0, 2, shape, generator=generator, device=dev).to(like.device)
    return (2 * bits - 1).to(like.dtype)


def _coin(m: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randint(0, 2, (m,), generator=generator, device=dev).to(like.device).bool()


def _l2_normalize(t: torch.Tensor) -> torch.Tensor:
    unit: torch.Tensor = t / t.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (t.dim() - 1)))
    return unit


@ATTACKS.register("square")
class Square(Attack):
    """Square Attack: random search over squares, scores only.

    Args:
        queries: query budget per sample (paper: 10 000; AutoAttack: 5000).
        p_init: initial fraction of the image covered by a square (paper: 0.8 for L-inf
            on ImageNet, 0.1 on small images for L2 in some settings; 0.8 here).
        loss: the objective to maximise; ``"margin"`` (the paper's untargeted loss; the
            paper uses CE for targeted attacks: pass ``loss="ce"``), any objective.
        early_stop: accepted for interface uniformity; broken samples always stop.
    """

    name = "square"
    needs_gradients = False
    stochastic = True
    iterative = True

    def __init__(
        self,
        *,
        queries: int = 1000,
        p_init: float = 0.8,
        loss: str | Objective = "margin",
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        if int(queries) < 1:
            raise InputError(f"queries must be >= 1, got {queries}")
        if not 0.0 < float(p_init) <= 1.0:
            raise InputError(f"p_init must be in (0, 1], got {p_init}")
        self.queries = int(queries)
        self.p_init = float(p_init)

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        n = x.shape[0]
        everyone = torch.arange(n, device=x.device)
        logits = problem.logits(x, everyone)  # query 1: the clean images
        done = problem.success(logits, everyone)
        x_best = x.clone()
        if self.queries < 2 or bool(done.all()):
            return x_best, 1
        # query 2: the initial perturbation, always taken (as in the paper)
        todo = everyone[~done]
        start = self._init_linf if problem.threat.norm == "linf" else self._init_l2
        x_init = problem.clamp(start(x[todo], problem.threat.eps, generator))
        logits = problem.logits(x_init, todo)
        x_best[todo] = x_init
        best_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        best_loss[todo] = problem.loss(logits, todo).to(x.dtype)
        done[todo] = problem.success(logits, todo)
        propose = self._propose_linf if problem.threat.norm == "linf" else self._propose_l2
        steps = 1
        for i in range(self.queries - 2):
            todo = everyone[~done]
            if todo.numel() == 0:
                break
            p = p_selection(self.p_init, i, self.queries)
            x_new = problem.clamp(propose(x[todo], x_best[todo], p, problem.threat.eps, problem.bounds, generator))
            logits = problem.logits(x_new, todo)
            loss = problem.loss(logits, todo).to(x.dtype)
            hit = problem.success(logits, todo)
            take = hit | (loss > best_loss[todo])
            j = todo[take]
            x_best[j] = x_new[take]
            best_loss[j] = loss[take]
            done[todo] = hit
            steps += 1
        return x_best, steps

    # ------------------------------------------------------------------ L-inf

    @staticmethod
    def _init_linf(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """x + eps * vertical stripes: one random sign per sample, channel and column."""
        return x + eps * _signs((x.shape[0], x.shape[1], 1, x.shape[3]), x, generator)

    @staticmethod
    def _propose_linf(
        x: torch.Tensor,
        x_best: torch.Tensor,
        p: float,
        eps: float,
        bounds: tuple[float, float],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        m, c, h, w = x.shape
        side = min(h, w)
        s = min(max(int(round(math.sqrt(p * h * w))), 1), max(side - 1, 1))
        mask = _window_masks(m, h, w, s, generator, x.device)
        signs = _signs((m, c, 1, 1), x, generator)

        def candidate(sg: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, (x + eps * sg).clamp(*bounds), x_best)

        x_new = candidate(signs)
        for _ in range(_MAX_REDRAWS):  # redraw the signs of squares that would change nothing
            same = ((x_new - x_best).abs() < 1e-7).flatten(1).all(dim=1)
            if not same.any():
                break
            signs = torch.where(same.reshape(-1, 1, 1, 1), _signs((m, c, 1, 1), x, generator), signs)
            x_new = candidate(signs)
        return x_new

    # ------------------------------------------------------------------ L2

    @staticmethod
    def _init_l2(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """Tile the image with meta-patterns (random orientation and per-channel sign),
        scaled to L2 norm eps."""
        m, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        eta = meta_pattern(s, x.dtype).to(x.device)
        delta = torch.zeros_like(x)
        nh, nw = h // s, w // s
        top, left = (h - s * nh) // 2, (w - s * nw) // 2
        for i in range(nh):
            for j in range(nw):
                flip = _coin(m, x, generator).reshape(-1, 1, 1, 1)
                pattern = torch.where(flip, eta.t(), eta)  # (m, 1, s, s)
                r, q = top + i * s, left + j * s
                delta[:, :, r : r + s, q : q + s] += pattern * _signs((m, c, 1, 1), x, generator)
        return x + eps * _l2_normalize(delta)

    @staticmethod
    def _propose_l2(
        x: torch.Tensor,
        x_best: torch.Tensor,
        p: float,
        eps: float,
        bounds: tuple[float, float],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        m, c, h, w = x.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, h, w)
        delta = x_best - x
        win1 = _window_masks(m, h, w, s, generator, x.device)
        win2 = _window_masks(m, h, w, s, generator, x.device)
        full1 = win1.expand(m, c, h, w)
        old = delta.masked_select(full1).reshape(m, c, s, s)  # the first square's content
        old_norm = old.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_image = delta.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        norm_windows = (delta * (win1 | win2)).flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)

        eta = meta_pattern(s, x.dtype).to(x.device)
        flip = _coin(m, x, generator).reshape(-1, 1, 1, 1)
        new = torch.where(flip, eta.t(), eta) * _signs((m, c, 1, 1), x, generator)
        new = new + old / (old_norm + 1e-12)
        budget = ((eps**2 - norm_image**2).clamp_min(0.0) / c + norm_windows**2).sqrt()
        new = new / (new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt() + 1e-12) * budget
        delta = delta.masked_fill(win2, 0.0).masked_scatter(full1, new)
        return x + eps * _l2_normalize(delta)
