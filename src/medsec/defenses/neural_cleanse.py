"""Neural Cleanse: reverse-engineer a trigger per class, flag the class whose trigger is
abnormally small (Wang et al., IEEE S&P 2019, "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks").

Threat model of the defence: a defender with the model (white-box gradients) and a small
clean set, but neither the trigger nor the target. For every class k the defender looks
for the smallest mask m_k (H x W, in [0, 1]) and pattern p_k (C x H x W, in the image
bounds) such that x' = (1 - m_k) * x + m_k * p_k is classified as k:

    min_{m, p}  CE(f(x'), k) + lambda_k * |m_k|_1

A backdoor target needs a much smaller mask than the other classes. With the L1 norms
of the masks found, the anomaly index of class k is |l_k - median| / (1.4826 * MAD)
(median absolute deviation, consistent for a normal distribution); a class with a
below-median norm and an index above ``threshold`` (2, the paper's) is flagged.

The paper's optimiser and schedule, kept here: mask and pattern are parametrised through
tanh (``(tanh(w) + 1) / 2``), Adam at lr 0.1 with betas (0.5, 0.9); lambda starts at 0 (the
reference code's ``reset_cost_to_zero``), is set to ``init_cost`` 1e-3 the first time the
class reaches the attack-success ``target_asr`` 0.99, and then, after ``patience``
consecutive steps above (below) that success, is multiplied by 1.5 (divided by 1.5 ** 1.5).
The paper adjusts per epoch of its clean set; medsec per step of one mini-batch. The reported norm of a class is
the smallest L1 mask norm seen at a step whose mini-batch attack success reached
``target_asr`` (the last mask when it never did).

The MAD scale. The paper takes the MAD of the raw L1 norms. On BloodMNIST the clean
classes need masks of very different sizes (L1 15 to 95 on a 28 x 28 image: turning any
cell into a platelet takes most of the image), so the MAD is large and the BadNets target
(L1 2.6, seven times smaller than any other class) gets an index of only 0.85: the paper's
test misses it. Mask norms are positive and spread multiplicatively, so ``scale="log"``
takes the MAD of log norms instead (index 2.37 for the same target: flagged). The default
stays the paper's; ``summary()`` reports both.

Choices the paper leaves open, and medsec's: all classes are optimised *in one batched
problem* (one mask and pattern per class, one forward pass of C x ``batch_size`` images
per step; the classes do not interact because their losses add up), for ``steps`` steps
(the paper runs epochs over its clean set until early stop; a few hundred steps suffice
on 28-px images); every step draws a new mini-batch of the clean set from the seeded
generator.

Threat model check: works on any module that returns class logits (a classifier, a
zero-shot CLIP head); it needs gradients, so a non-differentiable defended model must be
inspected without its purifier.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any classifier module
    >>> x_clean = torch.rand(32, 3, 28, 28)
    >>> nc = NeuralCleanse(steps=20).fit(model, x_clean)  # default 300 steps
    >>> nc.anomaly_index_.shape, nc.flagged_classes_  # one index per class; no backdoor to find here
    (torch.Size([4]), [])
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from medsec.defenses.detection import Detector
from medsec.errors import InputError
from medsec.registry import DETECTORS
from medsec.validation import check_images

log = logging.getLogger(__name__)

MAD_CONSTANT = 1.4826


def anomaly_index(norms: torch.Tensor, scale: str = "linear") -> torch.Tensor:
    """MAD anomaly index of each value: |x - median| / (1.4826 * median |x - median|),
    of the norms themselves (``scale="linear"``, the paper) or of their logarithms (``"log"``).

    Example:
        >>> anomaly_index(torch.tensor([10.0, 10.5, 9.5, 10.0, 2.0])).round(decimals=2)
        tensor([ 0.0000,  0.6700,  0.6700,  0.0000, 10.7900])
    """
    norms = norms.double().flatten()
    if scale == "log":
        norms = norms.clamp_min(1e-12).log()
    elif scale != "linear":
        raise InputError(f"scale must be 'linear' or 'log', got {scale!r}")
    med = _median(norms)
    dev = (norms - med).abs()
    mad = MAD_CONSTANT * _median(dev)
    return (dev / mad.clamp_min(1e-12)).float()


def _median(t: torch.Tensor) -> torch.Tensor:
    """The median with the two middle values averaged for an even count (``np.median``, as
    the reference code; ``torch.median`` returns the lower one)."""
    return torch.quantile(t, 0.5)


@DETECTORS.register("neural_cleanse")
class NeuralCleanse(Detector):
    """Per-class trigger reverse-engineering (batched over classes) + MAD outlier test.

    A *model-level* detector: :meth:`fit` inspects the model; :meth:`score` returns the
    anomaly index per class and :meth:`detect` the per-class flags (inputs are not used).

    Args:
        steps: optimisation steps (all classes at once).
        batch_size: clean images per class per step.
        lr: Adam learning rate (paper: 0.1).
        init_cost: initial lambda (paper: 1e-3).
        target_asr: attack success that counts as "trigger found" (paper: 0.99).
        patience: steps before lambda is adjusted (paper: 5).
        multiplier: lambda factor up (down: multiplier ** 1.5) (paper: 1.5).
        threshold: anomaly index above which a small-norm class is flagged (paper: 2).
        scale: ``"linear"`` (the paper: MAD of the L1 norms) or ``"log"`` (MAD of their
            logarithms; see the module docstring).
        seed: seeds the initial masks and the mini-batches.
    """

    name = "neural_cleanse"
    inspects = "model"

    def __init__(self, *, steps: int = 300, batch_size: int = 32, lr: float = 0.1, init_cost: float = 1e-3,
                 target_asr: float = 0.99, patience: int = 5, multiplier: float = 1.5, threshold: float = 2.0,
                 scale: str = "linear", seed: int = 0) -> None:
        for key, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("patience", patience, 1)):
            if isinstance(value, bool) or int(value) != value or int(value) < low:
                raise InputError(f"{key} must be an integer >= {low}, got {value!r}")
        if not float(lr) > 0:
            raise InputError(f"lr must be > 0, got {lr}")
        if not float(init_cost) > 0:
            raise InputError(f"init_cost must be > 0, got {init_cost}")
        if not 0 < float(target_asr) <= 1:
            raise InputError(f"target_asr must be in (0, 1], got {target_asr}")
        if not float(multiplier) > 1:
            raise InputError(f"multiplier must be > 1, got {multiplier}")
        if not float(threshold) > 0:
            raise InputError(f"threshold must be > 0, got {threshold}")
        self.steps, self.batch_size, self.lr, self.init_cost = int(steps), int(batch_size), float(lr), float(init_cost)
        self.target_asr, self.patience, self.multiplier = float(target_asr), int(patience), float(multiplier)
        if scale not in ("linear", "log"):
            raise InputError(f"scale must be 'linear' or 'log', got {scale!r}")
        self.threshold, self.scale, self.seed = float(threshold), scale, int(seed)

    def fit(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> NeuralCleanse:
        """Reverse-engineer one trigger per class of ``model`` on the clean images ``x``."""
        check_images(x, name="clean images")
        if x.shape[0] < 2:
            raise InputError(f"Neural Cleanse needs at least 2 clean images, got {x.shape[0]}")
        params = [p for p in model.parameters()]
        device = params[0].device if params else x.device
        lo, hi = (float(b) for b in getattr(getattr(model, "spec", None), "bounds", (0.0, 1.0)))
        was = model.training
        model.eval()
        grads = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.no_grad():
                n_classes = int(model(x[:1].to(device)).shape[1])
            if n_classes < 3:
                raise InputError(f"Neural Cleanse's MAD test needs at least 3 classes, the model has {n_classes}")
            masks, patterns, norms, asr = self._optimise(model, x, n_classes, device, lo, hi)
        finally:
            for p, g in zip(params, grads):
                p.requires_grad_(g)
            model.train(was)
        self.masks_, self.patterns_, self.mask_norms_, self.trigger_asr_ = masks, patterns, norms, asr
        self.anomaly_index_ = anomaly_index(norms, self.scale)
        med = _median(norms.double()).float()
        flags = (self.anomaly_index_ > self.threshold) & (norms < med)
        self.flags_ = flags
        self.flagged_classes_ = flags.nonzero().flatten().tolist()
        self.fitted_ = True
        log.info("neural cleanse: mask L1 %s, anomaly index %s, flagged %s", [round(float(v), 1) for v in norms],
                 [round(float(v), 2) for v in self.anomaly_index_], self.flagged_classes_)
        return self

    def _optimise(self, model: torch.nn.Module, x: torch.Tensor, k: int, device: torch.device, lo: float,
                  hi: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        c, h, w = x.shape[1:]
        mask_w = (torch.rand(k, 1, h, w, generator=g) * 2 - 1).to(device).requires_grad_(True)
        pat_w = (torch.rand(k, c, h, w, generator=g) * 2 - 1).to(device).requires_grad_(True)
        opt = torch.optim.Adam([mask_w, pat_w], lr=self.lr, betas=(0.5, 0.9))
        cost = torch.zeros(k, device=device)  # 0 until a class first reaches the target (paper)
        cost_set = torch.zeros(k, dtype=torch.bool, device=device)
        up = torch.zeros(k, dtype=torch.long, device=device)
        down = torch.zeros(k, dtype=torch.long, device=device)
        best_norm = torch.full((k,), float("inf"), device=device)
        best_mask = torch.zeros(k, 1, h, w, device=device)
        best_pat = torch.zeros(k, c, h, w, device=device)
        best_asr = torch.zeros(k, device=device)
        bs = min(self.batch_size, x.shape[0])
        targets = torch.arange(k, device=device).repeat_interleave(bs)
        for _ in range(self.steps):
            idx = torch.randint(0, x.shape[0], (bs,), generator=g)
            xb = x[idx].to(device)
            mask = (torch.tanh(mask_w) + 1) / 2
            pattern = lo + (hi - lo) * (torch.tanh(pat_w) + 1) / 2
            stamped = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]  # (k, bs, c, h, w)
            logits = model(stamped.reshape(k * bs, c, h, w))
            ce = F.cross_entropy(logits, targets, reduction="none").reshape(k, bs).mean(1)
            l1 = mask.flatten(1).sum(1)
            loss = (ce + cost * l1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                asr = (logits.argmax(1) == targets).float().reshape(k, bs).mean(1)
                ok = asr >= self.target_asr
                better = ok & (l1 < best_norm)
                best_norm = torch.where(better, l1, best_norm)
                best_mask[better], best_pat[better], best_asr[better] = mask[better], pattern[better], asr[better]
                first = ok & ~cost_set
                cost = torch.where(first, torch.full_like(cost, self.init_cost), cost)
                cost_set |= first
                up = torch.where(ok, up + 1, torch.zeros_like(up))
                down = torch.where(ok, torch.zeros_like(down), down + 1)
                raise_ = cost_set & (up >= self.patience)
                lower = cost_set & (down >= self.patience)
                cost = torch.where(raise_, cost * self.multiplier, cost)
                cost = torch.where(lower, cost / self.multiplier ** 1.5, cost)
                up = torch.where(raise_, torch.zeros_like(up), up)
                down = torch.where(lower, torch.zeros_like(down), down)
        with torch.no_grad():
            never = torch.isinf(best_norm)
            if never.any():
                mask = (torch.tanh(mask_w) + 1) / 2
                pattern = lo + (hi - lo) * (torch.tanh(pat_w) + 1) / 2
                best_mask[never], best_pat[never] = mask[never], pattern[never]
                best_norm = torch.where(never, mask.flatten(1).sum(1), best_norm)
                log.warning("neural cleanse: classes %s never reached attack success %.2f; their last mask is used",
                            never.nonzero().flatten().tolist(), self.target_asr)
        return best_mask.cpu(), best_pat.cpu(), best_norm.cpu(), best_asr.cpu()

    def score(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """The anomaly index of every class (a model-level score; ``x`` is not used)."""
        self._need_fit()
        return self.anomaly_index_.clone()

    def detect(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class flags: below-median mask norm and anomaly index above ``threshold``."""
        self._need_fit()
        return self.flags_.clone()

    def summary(self) -> dict[str, object]:
        """What results.json stores: norms, anomaly indices, flagged classes."""
        self._need_fit()
        other = "log" if self.scale == "linear" else "linear"
        return {"mask_l1": [float(v) for v in self.mask_norms_], "anomaly_index": [float(v) for v in self.anomaly_index_],
                "scale": self.scale, f"anomaly_index_{other}": [float(v) for v in anomaly_index(self.mask_norms_, other)],
                "trigger_asr": [float(v) for v in self.trigger_asr_], "flagged_classes": list(self.flagged_classes_),
                "threshold": self.threshold}
